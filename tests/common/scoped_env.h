// An environment variable set for a scope, for tests that make a backend or
// engine under a mode (GLM_CUDA_PROMPTS=tensor, ...): whatever the test's
// outcome, the variable gets back what it had, so later tests see their
// defaults.
#pragma once

#include <cstdlib>
#include <string>

namespace glm::testing_env {

// Sets an environment variable for its lifetime, then puts back what was there.
class ScopedEnv {
 public:
  ScopedEnv(const char* name, const char* value) : name_(name) {
    const char* old = std::getenv(name);
    had_ = old != nullptr;
    if (had_) old_ = old;
    setenv(name, value, 1);
  }
  ~ScopedEnv() {
    if (had_) setenv(name_, old_.c_str(), 1);
    else unsetenv(name_);
  }
  ScopedEnv(const ScopedEnv&) = delete;
  ScopedEnv& operator=(const ScopedEnv&) = delete;

 private:
  const char* name_;
  bool had_ = false;
  std::string old_;
};

}  // namespace glm::testing_env
