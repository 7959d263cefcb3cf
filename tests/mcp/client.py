"""A real MCP client (the official Python SDK, `mcp` from PyPI) driving `taskmail mcp`.

Usage: client.py PLAN_JSON. The plan names the taskmail binary, its config, the account, a
unique token, the worker address for dispatch_task and the recipient for send_message. Prints
one JSON object with what every step saw; tests/mcp.rs asserts on it. Steps that fail record
their error and the script goes on, so that the Rust side reports every problem at once.
"""

import asyncio
import json
import sys
import time

from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client


def field(obj, *names):
    """The first attribute of `names` that `obj` has (the SDK renamed camelCase to snake_case)."""
    for name in names:
        if hasattr(obj, name):
            return getattr(obj, name)
    return None


def text_of(result):
    return "".join(getattr(c, "text", "") for c in result.content)


def outcome(result):
    return {
        "isError": bool(field(result, "is_error", "isError")),
        "structured": field(result, "structured_content", "structuredContent"),
        "text": text_of(result),
    }


async def poll(session, tool, args, done, timeout):
    """Calls `tool` until `done(structured)` holds or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        result = await session.call_tool(tool, args)
        last = outcome(result)
        if not last["isError"] and done(last["structured"] or {}):
            return last, True
        if time.monotonic() >= deadline:
            return last, False
        await asyncio.sleep(0.3)


async def main(plan):
    out = {"steps": {}}
    params = StdioServerParameters(
        command=plan["binary"],
        args=["-c", plan["config"], "mcp", "--account", plan["account"]],
        env=plan.get("env"),
    )
    started = time.monotonic()
    async with stdio_client(params) as (read, write):
        async with ClientSession(read, write) as session:
            init = await session.initialize()
            info = field(init, "server_info", "serverInfo")
            out["server"] = {"name": info.name, "version": info.version,
                             "protocol": field(init, "protocol_version", "protocolVersion"),
                             "tools": init.capabilities.tools is not None}
            listed = await session.list_tools()
            out["tools"] = {}
            for t in listed.tools:
                schema = field(t, "input_schema", "inputSchema") or {}
                out["tools"][t.name] = {"required": schema.get("required", []),
                                        "properties": sorted(schema.get("properties", {}))}
            steps = out["steps"]
            # A clear error for a bad argument, as a tool result (not a protocol error).
            steps["bad_task"] = outcome(await session.call_tool(
                "get_task", {"task_id": "no-such-task-" + plan["token"]}))
            steps["bad_send"] = outcome(await session.call_tool("send_message", {"to": []}))

            if plan.get("mailbox", True):
                t0 = time.monotonic()
                sent = outcome(await session.call_tool("send_message", {
                    "to": [plan["send_to"]],
                    "subject": "mcp " + plan["token"],
                    "text": "hello from the MCP client " + plan["token"],
                    "monitor": True,
                }))
                steps["send_message"] = sent
                envelope_id = (sent["structured"] or {}).get("id")
                if envelope_id:
                    def has_frame(s):
                        return any(f.get("id") == envelope_id for f in s.get("frames", []))
                    inbox, ok = await poll(session, "check_inbox",
                                           {"unread_only": True, "limit": 1000}, has_frame, 60)
                    steps["check_inbox"] = inbox
                    steps["check_inbox"]["found"] = ok
                    steps["check_inbox"]["seconds"] = round(time.monotonic() - t0, 3)
                    if ok:
                        steps["read_message"] = outcome(await session.call_tool(
                            "read_message", {"id": envelope_id}))
                        steps["reply"] = outcome(await session.call_tool(
                            "reply", {"id": envelope_id, "text": "reply " + plan["token"]}))
                    facts, ok = await poll(session, "get_delivery_facts",
                                           {"envelope_id": envelope_id},
                                           lambda s: s.get("count", 0) > 0, 60)
                    steps["get_delivery_facts"] = facts
                    steps["get_delivery_facts"]["found"] = ok

            t0 = time.monotonic()
            dispatched = outcome(await session.call_tool("dispatch_task", {
                "to": plan["worker"],
                "title": "mcp task " + plan["token"],
                "instructions": "echo " + plan["token"],
            }))
            steps["dispatch_task"] = dispatched
            task_id = (dispatched["structured"] or {}).get("taskId")
            if task_id:
                def finished(s):
                    return s.get("state") in ("completed", "rejected", "cancelled", "expired")
                task, ok = await poll(session, "get_task", {"task_id": task_id}, finished, 90)
                steps["get_task"] = task
                steps["get_task"]["finished"] = ok
                steps["get_task"]["seconds"] = round(time.monotonic() - t0, 3)
                steps["answer_help_not_waiting"] = outcome(await session.call_tool(
                    "answer_help", {"task_id": task_id, "text": "too late"}))
    out["seconds"] = round(time.monotonic() - started, 3)
    print(json.dumps(out))


if __name__ == "__main__":
    asyncio.run(main(json.loads(sys.argv[1])))
