// Test helpers for bad-input checks: the message of the glm::Error an action
// throws, and the expectation that it names given things.
#pragma once

#include <gtest/gtest.h>

#include <functional>
#include <string>
#include <vector>

#include "core/error.h"

namespace glm::testing_fixtures {

// The message of the glm::Error that `action` throws; a test failure if it
// throws nothing or anything else.
inline std::string error_of(const std::function<void()>& action) {
  try {
    action();
  } catch (const glm::Error& error) {
    return error.what();
  } catch (const std::exception& error) {
    ADD_FAILURE() << "expected glm::Error, got another exception: " << error.what();
    return "";
  }
  ADD_FAILURE() << "expected glm::Error, nothing was thrown";
  return "";
}

// `action` must throw a glm::Error whose message contains every needle.
inline void expect_error(const std::function<void()>& action, const std::vector<std::string>& needles) {
  const std::string message = error_of(action);
  for (const std::string& needle : needles)
    EXPECT_NE(message.find(needle), std::string::npos) << "\"" << needle << "\" not in: " << message;
}

}  // namespace glm::testing_fixtures
