// ThreadCommunicator: an all-reduce among threads, for testing tensor
// parallelism on the CPU without any transport.
#include "backend/communicator.h"

namespace glm {

void ThreadCommunicator::all_reduce_sum(float* data, size_t count) {
  Group& group = *group_;
  std::unique_lock<std::mutex> lock(group.mutex);
  // Wait until the previous reduction has been read by every rank.
  group.changed.wait(lock, [&] { return group.departed == 0; });
  const long generation = group.generation;
  group.buffers[rank_] = data;
  if (++group.arrived == group.world_size) {
    group.sum.assign(count, 0.0f);
    for (int r = 0; r < group.world_size; ++r)
      for (size_t i = 0; i < count; ++i) group.sum[i] += group.buffers[r][i];
    group.arrived = 0;
    ++group.generation;
    group.changed.notify_all();
  } else {
    group.changed.wait(lock, [&] { return group.generation != generation; });
  }
  for (size_t i = 0; i < count; ++i) data[i] = group.sum[i];
  if (++group.departed == group.world_size) {
    group.departed = 0;
    group.changed.notify_all();
  }
}

}  // namespace glm
