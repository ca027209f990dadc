// Syntax tree of a parsed Jinja template: expressions and statements. Two
// generic node structs (rather than one class per construct) keep the parser
// and interpreter short; each field's meaning per kind is noted below.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "text/jinja/value.h"

namespace glm::jinja {

struct Expr;
using ExprPtr = std::unique_ptr<Expr>;

struct Expr {
  enum class Kind {
    Literal,   // value
    Name,      // name
    GetAttr,   // a.name
    GetItem,   // a[b]
    Slice,     // a[b:c:d]; missing parts are null
    Call,      // a(args, kwargs)
    Filter,    // a|name(args, kwargs); a null inside filter blocks and `set x | f` blocks
    Test,      // a is [not] name(args)
    Unary,     // name is "-", "+" or "not"; operand a
    Binary,    // a name b, name one of + - * / // % ** ~
    And,       // a and b
    Or,        // a or b
    Compare,   // a ops[0] args[0] ops[1] args[1] ... (chained like Python)
    Cond,      // a if b else c (c may be null)
    List,      // [args]
    Tuple,     // (args)
    Dict,      // {args[0]: args[1], ...}
  };
  Kind kind;
  int line = 0;
  Value value;
  std::string name;
  ExprPtr a, b, c, d;
  std::vector<ExprPtr> args;
  std::vector<std::pair<std::string, ExprPtr>> kwargs;
  std::vector<std::string> ops;
  bool negated = false;
};

struct Node;
using NodePtr = std::unique_ptr<Node>;
using Body = std::vector<NodePtr>;

struct Node {
  enum class Kind {
    Text,         // text
    Output,       // {{ expr }}
    If,           // branches: (condition, body); a null condition is the else branch
    For,          // for targets in expr [if cond] body [else else_body]
    Set,          // set targets = expr, or set targets[0].attr = expr when attr is set
    SetBlock,     // set targets[0] [| filters] body endset
    Macro,        // macro name(params = defaults) body
    CallBlock,    // call(params) expr body endcall: expr is the call, body becomes caller()
    FilterBlock,  // filter filters body endfilter
    Generation,   // generation body endgeneration (transformers' assistant-mask tag)
    With,         // with targets = values body endwith
    Break,
    Continue,
  };
  Kind kind;
  int line = 0;
  std::string text;
  ExprPtr expr;
  ExprPtr cond;
  std::vector<std::pair<ExprPtr, Body>> branches;
  std::vector<std::string> targets;
  std::string attr;
  std::vector<ExprPtr> values;  // With: one per target
  Body body, else_body;
  std::string name;
  std::vector<std::string> params;
  std::vector<ExprPtr> defaults;  // one per param, null when none
  std::vector<ExprPtr> filters;   // Filter exprs whose input is the body
};

// Parses tokens into a template body; throws glm::Error with the line number.
Body parse(const std::string& source);

}  // namespace glm::jinja
