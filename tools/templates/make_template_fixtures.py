#!/usr/bin/env python3
"""Render reference chat-template outputs for glm4moe's Jinja interpreter tests.

Every template in /work/shared/reference/chat-templates (the GLM ones and
other/*.jinja) is rendered with a set of conversations through transformers'
own render_jinja_template (jinja2 ImmutableSandboxedEnvironment with
trim_blocks, lstrip_blocks, loopcontrols, transformers' tojson,
raise_exception and strftime_now), after the same preparation the C++
render_chat_template does (OpenAI tool-call argument strings parsed to dicts).
The results go to tests/template/fixtures/<template>.json:

  {"template": "<file name>", "source": "<template text>",
   "cases": [{"name", "messages", "tools", "add_generation_prompt", "extra",
              "expected" (str) | "error" (exception class name and message)}]}

The C++ test (tests/template/test_chat_fixtures.cpp) renders each case and
compares byte for byte; for "error" cases it requires a glm::Error.

Usage: python3 tools/templates/make_template_fixtures.py [--reference DIR] [--out DIR]
"""
import argparse
import copy
import datetime
import json
import pathlib

from transformers.utils.chat_template_utils import render_jinja_template

ROOT = pathlib.Path(__file__).resolve().parents[2]

SPECIAL_TOKENS = {
    "glm-4.5-4.6.jinja": {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
    "glm-4.7.jinja": {"eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
    "Qwen-Qwen3-0.6B.jinja": {"bos_token": "", "eos_token": "<|im_end|>"},
    "openai-gpt-oss-120b.jinja": {"bos_token": "<|startoftext|>", "eos_token": "<|return|>"},
    "google-gemma-4-31B-it-interleaved.jinja": {"bos_token": "<bos>"},
    "mistralai-Mistral-Small-3.1-24B-Instruct-2503.jinja": {"bos_token": "<s>", "eos_token": "</s>"},
    "meta-llama-Llama-3.2-3B-Instruct.jinja": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                                               "date_string": "26 Jul 2024"},
    "deepseek-ai-DeepSeek-V3.1.jinja": {"bos_token": "<｜begin▁of▁sentence｜>", "eos_token": "<｜end▁of▁sentence｜>"},
}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city. Supports \"quotes\" & ünïcode — ok.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 10.5},
            },
            "required": ["city"],
        },
    },
}
SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Search the web.",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"},
                                                        "limit": {"type": "number", "default": 0.5}},
                       "required": ["query"]},
    },
}


def tool_call(name, arguments, call_id="abc123def"):
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


CONVERSATIONS = {
    "single_user": [{"role": "user", "content": "Hello!"}],
    "system_user": [{"role": "system", "content": "You are a helpful assistant."},
                    {"role": "user", "content": "What is 2+2?"}],
    "multi_turn": [{"role": "system", "content": "Be brief."},
                   {"role": "user", "content": "Hi"},
                   {"role": "assistant", "content": "Hello! How can I help?"},
                   {"role": "user", "content": "Tell me a joke.\nTwo lines please."}],
    "reasoning": [{"role": "user", "content": "Think about 3*7."},
                  {"role": "assistant", "content": "It is 21.", "reasoning_content": "3 times 7 is 21.\n"},
                  {"role": "user", "content": "And 4*5?"},
                  {"role": "assistant", "content": "20", "reasoning_content": "  four fives  "}],
    "inline_think": [{"role": "user", "content": "Q1"},
                     {"role": "assistant", "content": "<think>\nhidden thoughts\n</think>\n\nvisible answer"},
                     {"role": "user", "content": "Q2"}],
    "unicode": [{"role": "user", "content": "Grüße, 世界! 🚀 \"quoted\" \\ back\tslash"},
                {"role": "assistant", "content": "Ça va — très bien. ✓"}],
    "tool_calls_string_args": [
        {"role": "user", "content": "Weather in Paris and Tokyo?"},
        {"role": "assistant", "content": "",
         "tool_calls": [tool_call("get_weather", "{\"city\": \"Paris\", \"unit\": \"celsius\"}"),
                        tool_call("get_weather", "{\"city\": \"東京\", \"days\": 3, \"opts\": {\"a\": [1, 2.5, null, true]}}",
                                  "xyz789ghi")]},
        {"role": "tool", "tool_call_id": "abc123def", "content": "{\"temp\": 21}"},
        {"role": "tool", "tool_call_id": "xyz789ghi", "content": "Sunny, 25°C"},
        {"role": "assistant", "content": "Paris is 21°C and Tokyo is sunny."}],
    "tool_calls_dict_args": [
        {"role": "user", "content": "Search for cats"},
        {"role": "assistant", "content": "Let me search.",
         "tool_calls": [tool_call("search", {"query": "cats", "limit": 5})]},
        {"role": "tool", "tool_call_id": "abc123def", "content": "Cats are great."},
        {"role": "user", "content": "Thanks"}],
    "tool_call_then_prompt": [
        {"role": "system", "content": "Use tools when needed."},
        {"role": "user", "content": "Weather in Rome?"},
        {"role": "assistant", "content": "", "reasoning_content": "Need the weather tool.",
         "tool_calls": [tool_call("get_weather", "{\"city\": \"Rome\"}")]},
        {"role": "tool", "tool_call_id": "abc123def", "content": "18C"}],
    "content_none_tool_call": [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": None,
         "tool_calls": [tool_call("get_weather", "{\"city\": \"Oslo\"}")]},
        {"role": "tool", "tool_call_id": "abc123def", "content": "-3C"}],
    "content_parts": [{"role": "user", "content": [{"type": "text", "text": "Part one. "},
                                                    {"type": "text", "text": "Part two."}]}],
}

# (conversation, tools?, add_generation_prompt, extra variables)
VARIANTS = [
    ("single_user", False, True, {}),
    ("single_user", False, False, {}),
    ("system_user", False, True, {"enable_thinking": False}),
    ("system_user", False, True, {"enable_thinking": True}),
    ("multi_turn", False, True, {}),
    ("multi_turn", False, False, {"enable_thinking": False}),
    ("reasoning", False, True, {}),
    ("reasoning", False, False, {"clear_thinking": False}),
    ("inline_think", False, True, {}),
    ("unicode", False, False, {}),
    ("unicode", True, True, {}),
    ("tool_calls_string_args", True, True, {}),
    ("tool_calls_string_args", True, False, {"enable_thinking": False}),
    ("tool_calls_dict_args", True, True, {}),
    ("tool_call_then_prompt", True, True, {"enable_thinking": True}),
    ("tool_call_then_prompt", True, True, {"enable_thinking": False}),
    ("content_none_tool_call", True, True, {}),
    ("content_parts", False, True, {}),
    ("system_user", True, True, {}),
]


# Small templates exercising one feature each, rendered with the same
# environment; tests/template/test_jinja_unit.cpp checks them byte for byte.
UNIT_CASES = [
    # printing values as Python's str()
    ("{{ none }}|{{ true }}|{{ false }}|{{ 1 }}|{{ -3 }}|{{ 1.0 }}|{{ 0.1 }}|{{ 1e-05 }}|{{ 1e16 }}|{{ 123456.789 }}", {}),
    ("{{ x }}", {"x": {"a": 1, "b": [1, 2.5, None, True, "s'q", 'd"q']}}),
    ("{{ [1, 'a', none] }}{{ (1,) }}{{ (1, 2) }}{{ {} }}{{ [] }}", {}),
    ("{{ 'it\\'s' }} {{ [\"it's\"] }} {{ ['a\\nb\\t\\\\'] }}", {}),
    ("{{ 2.5e-7 }} {{ 1/3 }} {{ 10/2 }} {{ 7//2 }} {{ -7//2 }} {{ -7 % 3 }} {{ 2**10 }} {{ 7.5 % 2 }}", {}),
    # tojson variants
    ("{{ x | tojson }}", {"x": {"b": 1, "a": [1.5, None, True, "é\n\"\u0001"], "c": {}}}),
    ("{{ x | tojson(ensure_ascii=True) }}", {"x": ["é", "😀", "<&>"]}),
    ("{{ x | tojson(indent=2) }}", {"x": {"a": [1, {"b": []}], "c": "d"}}),
    ("{{ x | tojson(indent=2, sort_keys=True) }}", {"x": {"z": 1, "a": {"y": 2, "b": 3}}}),
    ("{{ x | tojson(separators=(',', ':')) }}", {"x": {"a": [1, 2], "b": None}}),
    ("{{ x | tojson(indent='\\t') }}", {"x": [1, [2]]}),
    ("{{ 1.0 | tojson }} {{ 1e100 | tojson }} {{ 0.0001 | tojson }} {{ 'a' | tojson }}", {}),
    # loops
    ("{% for x in xs %}{{ loop.index }}{{ loop.index0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }}{{ loop.revindex }}{{ loop.revindex0 }};{% endfor %}", {"xs": "abc"}),
    ("{% for x in xs %}{{ x }}{% else %}empty{% endfor %}", {"xs": []}),
    ("{% for x in xs if x is odd %}{{ x }}:{{ loop.length }},{% endfor %}", {"xs": [1, 2, 3, 4, 5]}),
    ("{% for x in xs %}{% if x == 3 %}{% break %}{% endif %}{% if x == 1 %}{% continue %}{% endif %}{{ x }}{% endfor %}", {"xs": [0, 1, 2, 3, 4]}),
    ("{% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %}{% for k in d %}{{ k }}{% endfor %}", {"d": {"b": 1, "a": 2}}),
    ("{% for x in xs %}{{ loop.previtem }}-{{ loop.nextitem }}-{{ loop.cycle('o', 'e') }} {% endfor %}", {"xs": [1, 2, 3]}),
    ("{% for a in [1,2] %}{% for b in [3,4] %}{{ a }}{{ b }}{{ loop.index }} {% endfor %}{% endfor %}", {}),
    ("{% set x = 1 %}{% for i in range(3) %}{% set x = x + i %}{{ x }}{% endfor %}{{ x }}", {}),
    # set, block set, namespace, with
    ("{% set a, b = 1, 2 %}{{ a }}{{ b }}{% set c %}X{{ a }}Y{% endset %}{{ c }}{% set d | upper %}lo{% endset %}{{ d }}", {}),
    ("{% set ns = namespace(n=0, s='') %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% set ns.s = ns.s ~ i %}{% endfor %}{{ ns.n }} {{ ns.s }}", {}),
    ("{% with a = 5 %}{{ a }}{% endwith %}{{ a is defined }}", {}),
    # macros and call
    ("{% macro m(a, b='B', c=none) %}[{{ a }}|{{ b }}|{{ c }}|{{ varargs }}|{{ kwargs }}]{% endmacro %}{{ m(1) }}{{ m(1, 2, 3, 4) }}{{ m(1, c=9, z=8) }}", {}),
    ("{% macro outer() %}<{{ inner() }}>{% endmacro %}{% macro inner() %}in{% endmacro %}{{ outer() }}", {}),
    ("{% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n * fact(n - 1) | int }}{% endif %}{% endmacro %}{{ fact(5) }}", {}),
    ("{% macro box() %}[{{ caller() }}]{% endmacro %}{% call box() %}inside{% endcall %}", {}),
    ("{% macro each(xs) %}{% for x in xs %}{{ caller(x) }}{% endfor %}{% endmacro %}{% call(y) each([1,2]) %}<{{ y }}>{% endcall %}", {}),
    ("{% filter upper %}abc{{ 'd' }}{% endfilter %}", {}),
    ("{% generation %}gen{{ 1 }}{% endgeneration %}", {}),
    # whitespace control
    ("a\n  {% if true %}\n    b\n  {% endif %}\nc\n", {}),
    ("a  {%- if true -%}  b  {%- endif -%}  c", {}),
    ("x\n{# comment #}\ny\n  {#- c2 -#}  \nz", {}),
    ("{% if true %}  a{% endif %}\n  {{ 'v' }}  \n{%+ if true %}b{% endif +%}\nc\n\n", {}),
    ("{% raw %}{{ not parsed }}{% endraw %}\n{{ 'after' }}", {}),
    ("line1\r\nline2\r\n{% if true %}\r\nx\r\n{% endif %}\r\n", {}),
    ("  {{ 'v' }}\n  {% set q = 1 %}\n  text", {}),
    # expressions
    ("{{ 'a' ~ 1 ~ none }} {{ 1 + 2 * 3 }} {{ (1 + 2) * 3 }} {{ -2 ** 2 }} {{ not 1 == 2 }} {{ 1 < 2 < 3 }}", {}),
    ("{{ 'b' in 'abc' }} {{ 'x' not in ['x'] }} {{ 'k' in {'k': 1} }} {{ x is not none }} {{ 1 if false }}.{{ 2 if 0 else 3 }}", {"x": 0}),
    ("{{ [1,2,3,4,5][1:4] }} {{ [1,2,3,4,5][::-1] }} {{ [1,2,3,4,5][::2] }} {{ 'hello'[1:-1] }} {{ 'héllo'[::-2] }} {{ [1,2,3][-1] }} {{ [1,2,3][5:] }}", {}),
    ("{{ x.a }}{{ x['a'] }}{{ x.missing }}{{ x.get('missing', 'dflt') }}{{ x.get('a') }}{{ x.keys() | list }}{{ x.values() | list }}", {"x": {"a": 1}}),
    ("{{ 'a' 'b' }} {{ \"line\\\ncont\" }} {{ '\\u00e9\\x41' }}", {}),
    ("{{ x or 'd' }} {{ x and 'y' }} {{ 0 or none }} {{ [] or {} }}", {"x": ""}),
    # string methods
    ("{{ '  hi  '.strip() }}|{{ 'xxhixx'.strip('x') }}|{{ '  a'.lstrip() }}|{{ 'b  \\n'.rstrip() }}|{{ 'a\\n\\n'.rstrip('\\n') }}", {}),
    ("{{ 'a,b,,c'.split(',') }} {{ ' a  b '.split() }} {{ 'a b c'.split(' ', 1) }} {{ 'a.b.c'.rsplit('.', 1) }}", {}),
    ("{{ 'abc'.startswith('ab') }} {{ 'abc'.endswith(('x', 'c')) }} {{ 'aaa'.replace('a', 'b', 2) }} {{ 'hello world'.title() }} {{ 'hELLO'.capitalize() }}", {}),
    ("{{ 'ÄbC'.upper() }} {{ 'ÄbC'.lower() }} {{ '{} and {}'.format(1, 'x') }} {{ '{0}{1}{0}'.format('a', 'b') }} {{ '{n}!'.format(n=3) }}", {}),
    # filters
    ("{{ '  t  ' | trim }}|{{ [1,2,3] | length }}|{{ 'héllo' | count }}|{{ {'a': 1} | items | list }}|{{ [1,2] | join('-') }}|{{ 'aB' | upper }}{{ 'aB' | lower }}", {}),
    ("{{ 'hello wORLD-foo (bar' | title }}|{{ 'hELLO' | capitalize }}|{{ 'aaa' | replace('a', 'b') }}|{{ 'aaa' | replace('a', 'b', 1) }}", {}),
    ("{{ x | default('d') }}|{{ none | default('d') }}|{{ '' | default('d', true) }}|{{ x | d('e') }}", {}),
    ("{{ [3,1,2] | first }}{{ [3,1,2] | last }}{{ 'abc' | list }}{{ [1,1,'a','A',2] | unique | list }}{{ 5 | string }}{{ [1] | string }}", {}),
    ("{{ '42' | int }} {{ '3.7' | int }} {{ 'x' | int }} {{ 4.9 | int }} {{ '2.5' | float }} {{ 'x' | float }} {{ -3 | abs }} {{ 2.5 | round }} {{ 3.14159 | round(2) }} {{ 2.1 | round(0, 'ceil') }}", {}),
    ("{{ 'a\\nb\\n\\nc' | indent }}|{{ 'a\\nb' | indent(2, true) }}|{{ 'a\\n\\nb' | indent(2, blank=true) }}|{{ 'one two, three' | wordcount }}|{{ '<b>' | safe }}", {}),
    ("{{ users | selectattr('active') | map(attribute='name') | join(',') }}|{{ users | rejectattr('active') | map(attribute='name') | list }}|{{ users | selectattr('name', 'equalto', 'b') | list | length }}", {"users": [{"name": "a", "active": True}, {"name": "b", "active": False}, {"name": "c", "active": True}]}),
    ("{{ ['a', 'b'] | map('upper') | list }} {{ [1, 2, 3] | select('odd') | list }} {{ [1, 2, 3] | reject('odd') | list }} {{ d | dictsort }} {{ [3, 1, 2] | sort }} {{ [1, 2] | reverse | list }}", {"d": {"b": 1, "A": 2}}),
    # tests
    ("{{ x is defined }}{{ y is undefined }}{{ none is none }}{{ 'a' is string }}{{ 1 is number }}{{ 1.5 is number }}{{ 1 is integer }}{{ 1.0 is integer }}{{ true is boolean }}{{ 1 is boolean }}", {"x": 1}),
    ("{{ {} is mapping }}{{ [] is mapping }}{{ 'a' is iterable }}{{ 1 is iterable }}{{ [] is sequence }}{{ true is true }}{{ 1 is true }}{{ false is false }}{{ 2 is in [1, 2] }}{{ 2 is eq 2 }}{{ 3 is divisibleby 3 }}{{ 2 is even }}", {}),
    # more whitespace and scoping corners
    ("a\n\t {% if true %}x{% endif %}\n\t{{ 'y' }}\n", {}),
    ("{%- macro m(x) -%}\n  [{{ x }}]\n{%- endmacro -%}\n{{ m(1) }}\n{{ m('two') }}", {}),
    ("{% macro m() %}{{ loop is defined }}{% endmacro %}{% for i in [1] %}{{ m() }}{% endfor %}", {}),
    ("{{ 'a' < 'b' }}{{ [1, 2] < [1, 3] }}{{ y is sequence }}{{ y is iterable }}{{ y | length }}{{ y | list }}", {}),
    ("{{ {'a': [1, {'b': none}], 1: 'x'} }} {{ x.content }} {{ x.missing is defined }}", {"x": {"content": None}}),
    ("{% for m in messages %}{{ m }}{% endfor %}{% if tools %}T{% endif %}{{ documents }}{{ add_generation_prompt }}", {}),
    ("{{ 'x' if none is none }}{{ [1, 2, 3] | map('string') | join }}{{ [0.5, 2] | sum }}{{ [3, 9] | max }}{{ 'abc' | center(7) }}|", {}),
    ("{% set x = [1, 2, 3] %}{{ x[1:] | tojson }}{{ x | tojson(indent=0) }}{{ 3 in x }}", {}),
    ("{{ '%s-%d' % ('a', 3) }} {{ 'ab' * 3 }} {{ [0] * 2 }} {{ 1 ~ 2 }}", {}),
    # errors
    ("{{ raise_exception('custom failure') }}", {}),
    ("{{ x.a.b }}", {}),
    ("{{ 'a' + 1 }}", {}),
    ("{{ 1 / 0 }}", {}),
    ("{{ [1, 2].append(3) }}", {}),
    ("{% for %}", {}),
    ("line1\n{% if x %}\nnever closed", {}),
    ("{{ 1 +* 2 }}", {}),
    ("{% endfor %}", {}),
    ("{{ x | nosuchfilter }}", {}),
    ("{{ 'abc' < 1 }}", {}),
]


def parse_arguments(messages):
    """The same conversion the C++ render_chat_template does before rendering."""
    messages = copy.deepcopy(messages)
    for m in messages:
        for call in m.get("tool_calls") or []:
            holder = call["function"] if isinstance(call.get("function"), dict) else call
            if isinstance(holder.get("arguments"), str):
                try:
                    parsed = json.loads(holder["arguments"])
                except ValueError:
                    continue
                if isinstance(parsed, dict):
                    holder["arguments"] = parsed
    return messages


def render(source, messages, tools, add_generation_prompt, extra):
    rendered, _ = render_jinja_template(conversations=[parse_arguments(messages)], tools=tools,
                                        chat_template=source, add_generation_prompt=add_generation_prompt, **extra)
    return rendered[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", default="/work/shared/reference/chat-templates")
    parser.add_argument("--out", default=str(ROOT / "tests/template/fixtures"))
    args = parser.parse_args()
    ref = pathlib.Path(args.reference)
    out_dir = pathlib.Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = sorted(ref.glob("*.jinja")) + sorted((ref / "other").glob("*.jinja"))
    for path in paths:
        source = path.read_text(encoding="utf-8")
        special = SPECIAL_TOKENS.get(path.name, {})
        cases = []
        for conv, with_tools, agp, extra in VARIANTS:
            name = f"{conv}{'_tools' if with_tools else ''}_agp{int(agp)}" + "".join(
                f"_{k}={v}" for k, v in extra.items())
            variables = {**special, **extra}
            tools = [WEATHER_TOOL, SEARCH_TOOL] if with_tools else None
            case = {"name": name, "messages": CONVERSATIONS[conv], "tools": tools,
                    "add_generation_prompt": agp, "extra": variables}
            try:
                case["expected"] = render(source, CONVERSATIONS[conv], tools, agp, variables)
            except Exception as e:  # the C++ interpreter must raise too
                case["error"] = f"{type(e).__name__}: {e}"
            cases.append(case)
        fixture = {"template": path.name, "source": source, "cases": cases}
        target = out_dir / (path.stem + ".json")
        target.write_text(json.dumps(fixture, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        errors = sum("error" in c for c in cases)
        print(f"{target.relative_to(ROOT) if target.is_relative_to(ROOT) else target}: "
              f"{len(cases)} cases ({errors} raise)")

    env_cases = []
    for source, context in UNIT_CASES:
        case = {"source": source, "context": context}
        try:
            # render_jinja_template adds messages/tools/...; they do not affect these templates.
            rendered, _ = render_jinja_template(conversations=[[]], chat_template=source, **context)
            case["expected"] = rendered[0]
        except Exception as e:
            case["error"] = f"{type(e).__name__}: {e}"
        env_cases.append(case)
    (out_dir / "unit.json").write_text(json.dumps({"cases": env_cases}, ensure_ascii=False, indent=1) + "\n",
                                       encoding="utf-8")
    print(f"unit.json: {len(env_cases)} cases")
    today = {fmt: datetime.datetime.now().strftime(fmt) for fmt in ("%Y-%m-%d", "%d %b %Y")}
    (out_dir / "today.json").write_text(json.dumps(today) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
