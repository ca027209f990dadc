// Collective communication between the ranks of a tensor-parallel group.
// On one device there is no communicator and the all-reduce op does nothing;
// on several GPUs an NCCL communicator will implement this interface (one
// process per GPU, see docs/design.md); for tests on the CPU,
// ThreadCommunicator joins ranks that run as threads of one process.
#pragma once

#include <condition_variable>
#include <cstddef>
#include <memory>
#include <mutex>
#include <vector>

namespace glm {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // Sums `count` floats elementwise over all ranks; every rank gets the sum.
  virtual void all_reduce_sum(float* data, size_t count) = 0;
};

// Ranks are threads sharing one ThreadGroup. The sum is accumulated in rank
// order, so every rank gets bit-identical results.
class ThreadCommunicator : public Communicator {
 public:
  struct Group {
    explicit Group(int world_size_) : world_size(world_size_), buffers(world_size_) {}
    int world_size;
    std::mutex mutex;
    std::condition_variable changed;
    std::vector<float*> buffers;
    int arrived = 0;
    int departed = 0;
    long generation = 0;
    std::vector<float> sum;
  };
  ThreadCommunicator(std::shared_ptr<Group> group, int rank) : group_(std::move(group)), rank_(rank) {}
  int rank() const override { return rank_; }
  int world_size() const override { return group_->world_size; }
  void all_reduce_sum(float* data, size_t count) override;

 private:
  std::shared_ptr<Group> group_;
  int rank_;
};

}  // namespace glm
