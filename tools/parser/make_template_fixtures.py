#!/usr/bin/env python3
"""Writes tests/parser/fixtures/template_roundtrip.json: assistant turns
rendered into history by the real GLM chat templates (GLM-4.5/4.6 and 4.7),
cut after the generation prompt, so the text is exactly what the model is
trained to emit. The expected parse is the message itself (reasoning and
content stripped, as the templates strip them), which checks that the
parser's whitespace rules invert the templates.

Rendering follows transformers' apply_chat_template: jinja2 sandbox with
trim_blocks and lstrip_blocks, and a tojson that takes ensure_ascii.

Usage: python3 tools/parser/make_template_fixtures.py  (from the repo root;
needs jinja2; reads /work/shared/reference/chat-templates or --templates)
"""
import argparse
import json
import pathlib

from jinja2.ext import loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "Weather for a city",
     "parameters": {"type": "object", "properties": {
         "city": {"type": "string"}, "days": {"type": "integer"}, "zip": {"type": "string"}}}}},
    {"type": "function", "function": {"name": "search", "description": "Search the web",
     "parameters": {"type": "object", "properties": {
         "query": {"type": "string"}, "filters": {"type": "object"}, "tags": {"type": "array"},
         "exact": {"type": "boolean"}, "limit": {"type": "number"}}}}},
    {"type": "function", "function": {"name": "get_time", "description": "Current time",
     "parameters": {"type": "object", "properties": {}}}},
]


def call(name, arguments):
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


# (name, assistant message); arguments only use values that survive the
# template's "strings raw, everything else tojson" rendering given TOOLS.
TURNS = [
    ("plain_answer", {"reasoning_content": "Simple greeting.", "content": "Hello! How can I help?"}),
    ("no_reasoning", {"content": "Just content,\n\nwith paragraphs."}),
    ("multiline_reasoning", {"reasoning_content": "First.\n\nSecond line.", "content": "Done."}),
    ("one_call", {"reasoning_content": "Need weather.", "content": "Let me check.",
                  "tool_calls": [call("get_weather", {"city": "Beijing", "days": 3})]}),
    ("call_without_content", {"reasoning_content": "Call directly.", "content": "",
                              "tool_calls": [call("get_weather", {"city": "Paris"})]}),
    ("several_calls", {"reasoning_content": "Two lookups.", "content": "Checking both.",
                       "tool_calls": [call("get_weather", {"city": "Paris", "zip": "75001"}),
                                      call("get_time", {}),
                                      call("search", {"query": "news", "limit": 5})]}),
    ("zero_argument_call", {"content": "", "tool_calls": [call("get_time", {})]}),
    ("typed_values", {"reasoning_content": "Search with filters.", "content": "",
                      "tool_calls": [call("search", {"query": "42", "filters": {"lang": "en", "n": [1, 2]},
                                                     "tags": ["a", "b"], "exact": False, "limit": 2.5})]}),
    ("number_like_strings", {"content": "", "tool_calls": [call("get_weather", {"zip": "01234", "city": "true"})]}),
    ("unicode", {"reasoning_content": "用户想知道天气。", "content": "好的 ✓",
                 "tool_calls": [call("get_weather", {"city": "São Paulo 北京"})]}),
    ("multiline_string_argument", {"content": "Searching.",
                                   "tool_calls": [call("search", {"query": "line one\nline <two>"})]}),
]


def make_environment():
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])

    def tojson(value, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env.filters["tojson"] = tojson
    return env


def assistant_output(template, message):
    """The text after the generation prompt, and whether that prompt opened <think>."""
    history = [{"role": "user", "content": "hi"}]
    full = template.render(messages=history + [dict(message, role="assistant")], tools=TOOLS,
                           add_generation_prompt=False)
    for thinking in (True, False):
        prompt = template.render(messages=history, tools=TOOLS, add_generation_prompt=True,
                                 enable_thinking=thinking)
        if full.startswith(prompt):
            return full[len(prompt):], prompt.endswith("<think>")
    raise SystemExit(f"no generation prompt is a prefix of the rendered turn: {full!r}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--templates", default="/work/shared/reference/chat-templates")
    parser.add_argument("--out", default="tests/parser/fixtures/template_roundtrip.json")
    args = parser.parse_args()

    env = make_environment()
    cases = []
    for template_file in ("glm-4.5-4.6.jinja", "glm-4.7.jinja"):
        template = env.from_string((pathlib.Path(args.templates) / template_file).read_text())
        label = template_file.removesuffix(".jinja").replace("-", "").replace(".", "")
        for name, message in TURNS:
            output, starts_in_reasoning = assistant_output(template, message)
            expected = {
                "reasoning": message.get("reasoning_content", "").strip(),
                "content": message.get("content", "").strip(),
                "tool_calls": [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                               for c in message.get("tool_calls", [])],
            }
            case = {"name": f"{label}_{name}", "output": output, "expected": expected}
            if starts_in_reasoning:
                case["options"] = {"starts_in_reasoning": True}
            cases.append(case)

    document = {
        "about": "Generated by tools/parser/make_template_fixtures.py: assistant turns rendered by the "
                 "real GLM templates; the parse must give the message back.",
        "tools": TOOLS,
        "cases": cases,
    }
    pathlib.Path(args.out).write_text(json.dumps(document, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {len(cases)} cases to {args.out}")


if __name__ == "__main__":
    main()
