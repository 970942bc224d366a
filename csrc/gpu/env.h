// Implementation switches read from the environment by the GPU host code, so that one
// GPU run can time alternatives (benches/) and the faster becomes the default.
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <string>

namespace fcn_kernels {

// Which of `choices` the environment variable `var` names (unset or empty: the first,
// the default). Read on every call (a getenv), so a benchmark can switch between calls;
// a bad value raises a ValueError naming the variable.
inline size_t env_choice(const char* var, std::initializer_list<const char*> choices) {
  const char* v = std::getenv(var);
  if (v == nullptr || *v == '\0') return 0;
  size_t i = 0;
  std::string names;
  for (const char* c : choices) {
    if (std::strcmp(v, c) == 0) return i;
    names += (i++ ? ", '" : "'") + std::string(c) + "'";
  }
  TORCH_CHECK_VALUE(false, var, " must be one of ", names, " (or unset), got '", v, "'");
  return 0;
}

}  // namespace fcn_kernels
