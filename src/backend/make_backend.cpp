// Choosing a backend by device name. The CUDA backend exists when the build
// includes it (CMake defines GLM_HAVE_CUDA); this file needs no CUDA headers.
#include "backend/backend.h"

namespace glm {

#ifdef GLM_HAVE_CUDA
// Defined in backend/cuda/.
std::unique_ptr<Backend> make_cuda_backend(int device_index, Communicator* communicator);
#endif

std::unique_ptr<Backend> make_backend(const std::string& device, Communicator* communicator) {
  if (device == "cpu") return make_cpu_backend(communicator);
  if (device == "cuda" || device.rfind("cuda:", 0) == 0) {
    int index = 0;
    if (device.size() > 5) {
      const std::string number = device.substr(5);
      GLM_CHECK(!number.empty() && number.find_first_not_of("0123456789") == std::string::npos,
                "device \"", device, "\" is not cuda or cuda:N");
      index = std::stoi(number);
    }
#ifdef GLM_HAVE_CUDA
    return make_cuda_backend(index, communicator);
#else
    fail("device \"", device, "\": this glm4moe was built without CUDA (configure with -DGLM_CUDA=ON)");
#endif
  }
  fail("unknown device \"", device, "\" (use cpu or cuda[:N])");
}

}  // namespace glm
