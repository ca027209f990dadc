// Builtin behaviour of the Jinja interpreter: Python operators, attribute and
// item access (dict/str/list methods), slicing, jinja2 filters and tests, and
// range(). Each throws glm::Error with a Python-like message on misuse.
#pragma once

#include <functional>
#include <string>

#include "text/jinja/value.h"

namespace glm::jinja {

// obj.name as jinja2's sandbox resolves it: a method first, then a key.
Value get_attr(const Value& obj, const std::string& name);
// obj[key]: a key or index first, then a method.
Value get_item(const Value& obj, const Value& key);
Value slice(const Value& obj, const Value& start, const Value& stop, const Value& step);

Value binary_op(const std::string& op, const Value& l, const Value& r);
bool compare_op(const std::string& op, const Value& l, const Value& r);

Value builtin_filter(const std::string& name, const Value& input, CallArgs& args);
bool apply_test(const std::string& name, const Value& v, CallArgs& args);

// map/select/reject/selectattr/rejectattr need to call other filters and tests.
struct FilterCaller {
  std::function<Value(const std::string&, const Value&, CallArgs&)> filter;
  std::function<bool(const std::string&, const Value&, CallArgs&)> test;
};
Value higher_order_filter(const std::string& name, const Value& input, CallArgs& args, const FilterCaller& caller);

Value builtin_range(CallArgs& args);

// The elements a Python for loop visits: list items, dict keys, string
// characters (undefined iterates as empty); throws for anything else.
List iterable_items(const Value& v);

}  // namespace glm::jinja
