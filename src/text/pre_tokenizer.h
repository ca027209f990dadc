// The tokenizer.json "pre_tokenizer" stage: cuts normalized text into the
// pieces that BPE encodes independently. Supported: Split (regex or string
// pattern, every split behavior, invert), ByteLevel (add_prefix_space,
// use_regex) and Sequence of those, with the reference library's semantics.
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

#include "text/onig_regex.h"

namespace glm::text {

// A non-owning callable, so that passing pieces down the chain of steps costs
// no allocation per piece.
template <typename Signature>
class FunctionRef;

template <typename Result, typename... Args>
class FunctionRef<Result(Args...)> {
 public:
  template <typename Callable>
    requires(!std::is_same_v<std::remove_cvref_t<Callable>, FunctionRef>)
  FunctionRef(Callable&& callable)  // NOLINT: implicit by design, like std::function
      : object_(const_cast<void*>(static_cast<const void*>(&callable))),
        call_([](void* object, Args... args) -> Result {
          return (*static_cast<std::remove_reference_t<Callable>*>(object))(std::forward<Args>(args)...);
        }) {}
  Result operator()(Args... args) const { return call_(object_, std::forward<Args>(args)...); }

 private:
  void* object_;
  Result (*call_)(void*, Args...);
};

using PieceSink = FunctionRef<void(std::string_view)>;

class PreTokenizerStep {
 public:
  virtual ~PreTokenizerStep() = default;
  // Emits the non-empty pieces that `piece` splits into, in order.
  virtual void split(std::string_view piece, PieceSink emit) const = 0;
};

class PreTokenizer {
 public:
  // `config` is the "pre_tokenizer" value; null passes text through whole.
  static PreTokenizer from_json(const nlohmann::json& config);

  // Emits the final pieces of `text` (valid UTF-8), dropping empty ones as
  // the reference does after every step.
  void run(std::string_view text, PieceSink emit) const;

 private:
  void add_steps(const nlohmann::json& config);
  void run_from(size_t step_index, std::string_view piece, PieceSink emit) const;

  std::vector<std::shared_ptr<const PreTokenizerStep>> steps_;
};

}  // namespace glm::text
