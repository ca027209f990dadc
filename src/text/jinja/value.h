// Values of the Jinja interpreter: the Python objects a chat template sees
// (None, bool, int, float, str, list/tuple, dict with insertion order,
// namespace, callables) plus jinja2's Undefined, and their Python-compatible
// printing (str/repr), comparison, truthiness and JSON conversion.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace glm::jinja {

class Value;
struct CallArgs;

// A builtin or template-defined function. Returning by value keeps calls simple.
using Function = std::function<Value(CallArgs&)>;

using List = std::vector<Value>;
// Python dicts keep insertion order; keys may be any hashable Value, so this is
// a vector of pairs with linear lookup (chat-template dicts are small).
using Dict = std::vector<std::pair<Value, Value>>;

class Value {
 public:
  enum class Kind { Undefined, None, Bool, Int, Float, String, List, Dict, Namespace, Function };

  Value() = default;  // Undefined
  static Value none() { Value v; v.kind_ = Kind::None; return v; }
  static Value undefined(std::string hint = {});
  Value(bool b) : kind_(Kind::Bool), int_(b) {}
  Value(int i) : kind_(Kind::Int), int_(i) {}
  Value(int64_t i) : kind_(Kind::Int), int_(i) {}
  Value(double d) : kind_(Kind::Float), float_(d) {}
  Value(std::string s) : kind_(Kind::String), str_(std::make_shared<std::string>(std::move(s))) {}
  Value(const char* s) : Value(std::string(s)) {}
  static Value list(List items, bool tuple = false);
  static Value dict(Dict items);
  static Value ns(Dict items);  // jinja2 namespace(): the only mutable object
  static Value function(std::string name, Function fn);
  static Value from_json(const nlohmann::ordered_json& j);

  Kind kind() const { return kind_; }
  bool is_undefined() const { return kind_ == Kind::Undefined; }
  bool is_none() const { return kind_ == Kind::None; }
  bool is_bool() const { return kind_ == Kind::Bool; }
  bool is_int() const { return kind_ == Kind::Int; }  // bool excluded, unlike Python
  bool is_float() const { return kind_ == Kind::Float; }
  bool is_number() const { return kind_ == Kind::Int || kind_ == Kind::Float || kind_ == Kind::Bool; }
  bool is_string() const { return kind_ == Kind::String; }
  bool is_list() const { return kind_ == Kind::List; }
  bool is_tuple() const { return kind_ == Kind::List && tuple_; }
  bool is_dict() const { return kind_ == Kind::Dict; }
  bool is_namespace() const { return kind_ == Kind::Namespace; }
  bool is_function() const { return kind_ == Kind::Function; }

  bool as_bool() const { return int_ != 0; }
  int64_t as_int() const { return int_; }  // Int or Bool
  double as_number() const { return kind_ == Kind::Float ? float_ : static_cast<double>(int_); }
  const std::string& str() const { return *str_; }
  const List& items() const { return *list_; }
  const Dict& entries() const { return *dict_; }
  Dict& mutable_entries() const { return *dict_; }  // namespaces only
  const Function& fn() const { return *fn_; }
  const std::string& fn_name() const { return *str_; }
  const std::string& undefined_hint() const;

  // Python semantics.
  bool truthy() const;
  std::string to_str() const;   // str(x); Undefined prints as ""
  std::string repr() const;     // repr(x), used inside lists and dicts
  std::string type_name() const;  // Python type name for messages
  // Looks up key in a dict/namespace; nullptr when absent.
  const Value* find(const Value& key) const;
  nlohmann::ordered_json to_json() const;  // throws for values JSON cannot hold

 private:
  Kind kind_ = Kind::Undefined;
  bool tuple_ = false;
  int64_t int_ = 0;
  double float_ = 0;
  std::shared_ptr<std::string> str_;  // string, function name or undefined hint
  std::shared_ptr<List> list_;
  std::shared_ptr<Dict> dict_;
  std::shared_ptr<Function> fn_;
};

// Arguments of a call: positional then keyword, as Python passes them.
struct CallArgs {
  std::vector<Value> positional;
  std::vector<std::pair<std::string, Value>> keyword;
  // Argument i by position or by name; Undefined when neither was given.
  Value get(size_t index, const std::string& name) const;
  bool has(size_t index, const std::string& name) const;
};

bool equals(const Value& a, const Value& b);   // Python ==
int compare(const Value& a, const Value& b);   // Python <, as -1/0/1; throws for unorderable types

// Python's repr(float): shortest round-trip digits, e.g. 1.0, 0.1, 1e-05, 1e+16.
std::string float_repr(double d);
std::string string_repr(const std::string& s);  // Python repr of a str

struct JsonOptions {
  bool ensure_ascii = false;
  bool indent_set = false;
  std::string indent;  // used when indent_set
  std::string item_separator = ", ";
  std::string key_separator = ": ";
  bool sort_keys = false;
};
// Python json.dumps of a Value.
std::string dump_json(const Value& v, const JsonOptions& options);

// UTF-8 helpers: templates index and measure strings in code points.
std::u32string utf8_decode(std::string_view s);
std::string utf8_encode(std::u32string_view s);
bool is_py_space(char32_t c);  // str.isspace()

}  // namespace glm::jinja
