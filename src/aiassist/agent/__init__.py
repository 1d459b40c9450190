"""The agent runtime: tools, their sources, providers, policy, runs, approvals and audit."""

from aiassist.agent.tools import RateLimit, Risk, Tool, ToolContext, ToolError, ToolSet, tool

__all__ = ["RateLimit", "Risk", "Tool", "ToolContext", "ToolError", "ToolSet", "tool"]
