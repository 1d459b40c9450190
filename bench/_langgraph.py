"""The same work as `agent_overhead.py`'s runs, in LangGraph: a scripted model node asks
for one tool call per turn, a `ToolNode` runs it, a checkpointer stores every step.

The graph is the one LangGraph's documentation builds for a tool-calling agent
(`MessagesState`, a model node, `ToolNode`, a conditional edge back). A step is the time
from one entry into the model node to the next (the checkpoint after the model, the tool
call, the checkpoint after the tool), with the model's and the tool's own time taken out.
`durability="sync"` writes each checkpoint before the next step starts, as aiassist stores
each call before going on (crash-safe); LangGraph's default, `"async"`, writes it while the
next step runs, and is measured beside it.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from langchain_core.messages import AIMessage, HumanMessage
from langchain_core.tools import tool
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.graph import END, START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode

__all__ = ["measure_langgraph", "saver"]

Durability = Literal["sync", "async"]
_own_ns: list[int] = []  # the model's and the tool's own time, taken out of the step


@tool
def noop(n: int) -> str:
    """Return at once."""
    started = time.perf_counter_ns()
    result = f'{{"n": {n}}}'
    _own_ns.append(time.perf_counter_ns() - started)
    return result


def _graph(turns: int, entries: list[int], own: list[int]) -> Any:
    def model(state: MessagesState) -> dict[str, list[AIMessage]]:
        entries.append(time.perf_counter_ns())
        own.append(sum(_own_ns))  # the tool call of the step that ends here
        _own_ns.clear()
        started = time.perf_counter_ns()
        asked = sum(1 for m in state["messages"] if isinstance(m, AIMessage))
        if asked < turns:
            call = {"name": "noop", "args": {"n": asked}, "id": f"call-{asked}"}
            reply = AIMessage(content="", tool_calls=[call])
        else:
            reply = AIMessage(content="ok")
        _own_ns.append(time.perf_counter_ns() - started)
        return {"messages": [reply]}

    def route(state: MessagesState) -> str:
        last = state["messages"][-1]
        return "tools" if isinstance(last, AIMessage) and last.tool_calls else END

    graph = StateGraph(MessagesState)
    graph.add_node("model", model)
    graph.add_node("tools", ToolNode([noop]))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", route, ["tools", END])
    graph.add_edge("tools", "model")
    return graph


@asynccontextmanager
async def saver(database: str, target: str) -> AsyncIterator[BaseCheckpointSaver[Any]]:
    """LangGraph's own async checkpointer: PostgreSQL (a libpq URL) or SQLite (a path)."""
    if database == "postgres":
        from langgraph.checkpoint.postgres.aio import AsyncPostgresSaver

        async with AsyncPostgresSaver.from_conn_string(target) as pg:
            await pg.setup()
            yield pg
    else:
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        async with AsyncSqliteSaver.from_conn_string(target) as lite:
            await lite.setup()
            yield lite


async def measure_langgraph(
    checkpointer: BaseCheckpointSaver[Any],
    steps: int,
    turns_per_run: int,
    durability: Durability,
    warmup: int = 5,
) -> list[int]:
    """Per-step cost in ns of `steps` steps, in runs of `turns_per_run` tool calls."""
    per_step: list[int] = []
    run = 0
    while len(per_step) < steps + warmup:
        turns = min(turns_per_run, steps + warmup - len(per_step))
        entries: list[int] = []
        own: list[int] = []
        app = _graph(turns, entries, own).compile(checkpointer=checkpointer)
        config = {"configurable": {"thread_id": f"bench-{durability}-{run}"},
                  "recursion_limit": 2 * turns + 5}  # fmt: skip
        _own_ns.clear()
        await app.ainvoke({"messages": [HumanMessage("bench")]}, config, durability=durability)
        # entry i+1 - entry i: step i (its model turn, tool call and both checkpoints)
        for i in range(1, len(entries)):
            per_step.append(entries[i] - entries[i - 1] - own[i])
        run += 1
    return per_step[warmup:]
