// Sampling on the GPU: one block per row of logits chooses the token the CPU
// reference (backend/sampling.cpp) chooses, by the rule and the arithmetic of
// backend/sampling_rule.h, and writes only its id.
//
// The reference sorts the vocabulary; here nothing is sorted. Every question
// the rule asks is "which token, in the order (logit descending, id
// ascending), is the first whose cumulative weight over the eligible tokens
// exceeds a target?":
//   top-k: weight 1 per token, target k - 1: the k-th token (its logit is
//          the cut; its ties stay);
//   top-p: weight = integer mass, target = the kept mass - 1: the last kept token;
//   draw:  weight = mass over the survivors, target = trunc(u * total).
// `locate` answers it by radix selection on an order-preserving 32-bit key of
// the logit, 8 bits per pass: each pass sums the weights of the eligible
// tokens whose key matches the digits found so far into 256 buckets and picks
// the bucket where the cumulative weight (from the largest digit down)
// crosses the target. One block reads a whole row per pass, so every pass
// keeps many loads in flight and adds to the shared buckets once per run of
// a thread's tokens that share a digit (see fill_buckets). After 4 passes the logit is known exactly; tokens tied
// on it all weigh the same, so the index among them is a division, and one
// block-wide prefix count finds that tie in id order. Masses are integers,
// so the order in which threads add them changes nothing. Once a filter has
// left at most kCompactCapacity candidates (top-k 50, the usual setting, or a
// peaked distribution after top-p), they are copied into shared memory in id
// order and the remaining searches run over them instead of the whole row.
#include <climits>

#include "backend/cuda/ops.cuh"
#include "backend/sampling_rule.h"

namespace glm::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kDigits = 256;  // 8 key bits per radix pass
constexpr int kCompactCapacity = 4096;

struct Shared {
  // Bucket sums are 64-bit, but a 64-bit atomic add in shared memory is a
  // compare-and-swap loop (ATOMS.CAST.SPIN on sm_90); two native 32-bit
  // adds, the second carrying the first's overflow, are exact (add_weight).
  uint32_t bucket_low[kDigits];
  uint32_t bucket_high[kDigits];
  unsigned long long bucket[kDigits];  // the sums: high * 2^32 + low
  float best_value[kWarps];
  int best_index[kWarps];
  int warp_count[kWarps];
  float compact_x[kCompactCapacity];  // compacted candidates, ascending id
  int compact_id[kCompactCapacity];
  uint32_t prefix;           // the digits found so far
  unsigned long long remaining;  // the target within the tokens matching `prefix`
  int found;
};

// Which tokens are still candidates: top-k keeps keys >= min_key; top-p keeps
// tokens up to (cut_key, cut_id) in the order; min-p keeps weights >= min_p.
struct Filter {
  float x_max = 0.0f;
  float inverse_temperature = 1.0f;
  uint32_t min_key = 0;
  uint32_t cut_key = 0;
  int cut_id = INT_MAX;
  float min_p = 0.0f;

  __device__ bool keeps(float x, uint32_t key, int id) const {
    if (key < min_key) return false;
    if (key < cut_key || (key == cut_key && id > cut_id)) return false;
    return min_p == 0.0f || sampling_weight(x, x_max, inverse_temperature) >= min_p;
  }

  // keeps(), and the token's weight in a search: 1 when counting, its
  // integer mass when summing masses (one exp serves min-p and the mass).
  template <bool kMass>
  __device__ bool weigh(float x, uint32_t key, int id, uint64_t& weight) const {
    if (key < min_key) return false;
    if (key < cut_key || (key == cut_key && id > cut_id)) return false;
    if (!kMass && min_p == 0.0f) {
      weight = 1;
      return true;
    }
    const float w = sampling_weight(x, x_max, inverse_temperature);
    if (min_p != 0.0f && w < min_p) return false;
    weight = kMass ? mass_of_weight(w) : 1;
    return true;
  }
};

// The tokens a search runs over: the whole row (ids null: the index is the
// token) or candidates compacted into shared memory, in ascending id order.
struct Candidates {
  const float* x;
  const int* ids;
  int count;
  __device__ int id(int i) const { return ids ? ids[i] : i; }
};

struct Position {
  uint32_t key;  // the token's order key (its logit)
  int id;        // the token
};

// Calls visit(x, i) for each candidate i this thread owns (i = threadIdx.x
// modulo kThreads, within 4-value pieces), in ascending i. A row in global
// memory made of whole 4-value pieces is read as float4s, kInFlight of them
// requested before any is visited: with one load outstanding per thread, a
// block waited on L2 latency (one thread's 296 dependent loads of a
// 151552-token row held a greedy step at ~20 us).
template <int kInFlight, typename Visit>
__device__ void for_each_owned(const Candidates& c, Visit visit) {
  if (c.ids == nullptr && c.count % 4 == 0 && reinterpret_cast<uintptr_t>(c.x) % 16 == 0) {
    const float4* pieces = reinterpret_cast<const float4*>(c.x);
    const int count = c.count / 4;
    for (int first = threadIdx.x; first < count; first += kThreads * kInFlight) {
      float4 piece[kInFlight];
#pragma unroll
      for (int j = 0; j < kInFlight; ++j)
        if (first + j * kThreads < count) piece[j] = pieces[first + j * kThreads];
#pragma unroll
      for (int j = 0; j < kInFlight; ++j) {
        const int q = first + j * kThreads;
        if (q >= count) break;
        visit(piece[j].x, 4 * q);
        visit(piece[j].y, 4 * q + 1);
        visit(piece[j].z, 4 * q + 2);
        visit(piece[j].w, 4 * q + 3);
      }
    }
  } else {
    for (int i = threadIdx.x; i < c.count; i += kThreads) visit(c.x[i], i);
  }
}

// The largest logit and its first index, to every thread. Each thread
// visits its share in ascending index (a strictly larger value replaces, so
// the first of equals stays), then the block keeps the lowest index among
// equal values: the first maximum, whatever the partition.
__device__ void block_argmax(const float* row, int vocab, Shared& s, float& best, int& best_index) {
  float value = -INFINITY;
  int index = -1;
  for_each_owned<8>(Candidates{row, nullptr, vocab}, [&](float x, int i) {
    if (index < 0 || x > value) value = x, index = i;
  });
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float other = __shfl_down_sync(0xffffffffu, value, offset);
    const int other_index = __shfl_down_sync(0xffffffffu, index, offset);
    if (other_index >= 0 && (index < 0 || other > value || (other == value && other_index < index)))
      value = other, index = other_index;
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) s.best_value[warp] = value, s.best_index[warp] = index;
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < kWarps; ++w) {
      const float other = s.best_value[w];
      const int other_index = s.best_index[w];
      if (other_index >= 0 && (index < 0 || other > value || (other == value && other_index < index)))
        value = other, index = other_index;
    }
    s.best_value[0] = value, s.best_index[0] = index;
  }
  __syncthreads();
  best = s.best_value[0];
  best_index = s.best_index[0];
  __syncthreads();  // s.best_* may be reused
}

// Adds a weight to bucket `digit`: exact however the threads interleave,
// because each 32-bit add returns the low word it found, so the one add
// that wraps it past 2^32 is the one that carries.
__device__ void add_weight(Shared& s, int digit, uint64_t weight) {
  const uint32_t low = static_cast<uint32_t>(weight), high = static_cast<uint32_t>(weight >> 32);
  const uint32_t before = atomicAdd(&s.bucket_low[digit], low);
  const uint32_t carried = high + (before + low < before ? 1u : 0u);
  if (carried) atomicAdd(&s.bucket_high[digit], carried);
}

// s.bucket[d] = total weight of the eligible tokens whose key matches `prefix`
// on `mask` and has digit d at `shift`.
template <bool kMass>
__device__ void fill_buckets(const Candidates& c, const Filter& filter, uint32_t prefix, uint32_t mask, int shift,
                             Shared& s) {
  for (int d = threadIdx.x; d < kDigits; d += kThreads) s.bucket_low[d] = s.bucket_high[d] = 0;
  __syncthreads();
  // A thread sums its run of tokens with one digit and adds the run once:
  // in a row's first pass nearly every logit has the same top 8 key bits
  // (the sign and the high exponent bits), and one add a token to that
  // bucket serialised the block.
  int run_digit = -1;
  uint64_t run_weight = 0;
  for_each_owned<4>(c, [&](float x, int i) {  // (8 in flight and the exp spill at 128 registers)
    const uint32_t key = order_key(x);
    uint64_t weight;
    if ((key & mask) != prefix || !filter.weigh<kMass>(x, key, c.id(i), weight) || weight == 0) return;
    const int digit = static_cast<int>((key >> shift) & 0xffu);
    if (digit != run_digit) {
      if (run_digit >= 0) add_weight(s, run_digit, run_weight);
      run_digit = digit;
      run_weight = 0;
    }
    run_weight += weight;
  });
  if (run_digit >= 0) add_weight(s, run_digit, run_weight);
  __syncthreads();
  for (int d = threadIdx.x; d < kDigits; d += kThreads)
    s.bucket[d] = (static_cast<unsigned long long>(s.bucket_high[d]) << 32) | s.bucket_low[d];
  __syncthreads();
}

// Each thread's share when threads own consecutive ranges of `count` items.
__device__ void thread_range(int count, int& begin, int& end) {
  const int per_thread = (count + kThreads - 1) / kThreads;
  begin = min(count, static_cast<int>(threadIdx.x) * per_thread);
  end = min(count, begin + per_thread);
}

// The sum of `count` over the threads before this one, and over all of them.
__device__ int block_exclusive_prefix(int count, Shared& s, int& total) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int inclusive = count;
  for (int offset = 1; offset < 32; offset <<= 1) {
    const int other = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += other;
  }
  if (lane == 31) s.warp_count[warp] = inclusive;
  __syncthreads();
  int before = inclusive - count;
  total = 0;
  for (int w = 0; w < kWarps; ++w) {
    if (w < warp) before += s.warp_count[w];
    total += s.warp_count[w];
  }
  __syncthreads();  // s.warp_count may be reused
  return before;
}

// The n-th eligible token (0-based) among those with `key`, in id order.
__device__ int nth_tied(const Candidates& c, const Filter& filter, uint32_t key, int n, Shared& s) {
  int begin, end, total;
  thread_range(c.count, begin, end);
  auto tied = [&](int i) { return order_key(c.x[i]) == key && filter.keeps(c.x[i], key, c.id(i)); };
  int count = 0;
  for (int i = begin; i < end; ++i) count += tied(i);
  int seen = block_exclusive_prefix(count, s, total);
  if (n >= seen && n < seen + count) {
    for (int i = begin; i < end; ++i) {
      if (!tied(i)) continue;
      if (seen++ == n) {
        s.found = c.id(i);
        break;
      }
    }
  }
  __syncthreads();
  const int found = s.found;
  __syncthreads();
  return found;
}

// The candidates the filter keeps, copied into shared memory in id order
// when there are at most kCompactCapacity of them; else `c` itself.
__device__ Candidates compact(const Candidates& c, const Filter& filter, Shared& s) {
  int begin, end, total;
  thread_range(c.count, begin, end);
  auto kept = [&](int i) { return filter.keeps(c.x[i], order_key(c.x[i]), c.id(i)); };
  int count = 0;
  for (int i = begin; i < end; ++i) count += kept(i);
  int slot = block_exclusive_prefix(count, s, total);
  if (total > kCompactCapacity) return c;  // the same decision in every thread
  for (int i = begin; i < end; ++i) {
    if (!kept(i)) continue;
    s.compact_x[slot] = c.x[i];
    s.compact_id[slot] = c.id(i);
    ++slot;
  }
  __syncthreads();
  return Candidates{s.compact_x, s.compact_id, total};
}

// The first eligible token, in order, whose cumulative weight exceeds
// target_of(total weight). with_id false skips finding which of several
// tokens tied on that logit it is (top-k needs only the logit).
template <bool kMass, typename Target>
__device__ Position locate(const Candidates& c, const Filter& filter, Shared& s, bool with_id, Target target_of) {
  uint32_t prefix = 0, mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    fill_buckets<kMass>(c, filter, prefix, mask, shift, s);
    if (threadIdx.x < 32) {
      // Lane l holds digits 255 - 8l down to 248 - 8l: lane order is descending digit order.
      const int lane = threadIdx.x;
      unsigned long long own = 0;
      for (int j = 0; j < 8; ++j) own += s.bucket[255 - 8 * lane - j];
      unsigned long long inclusive = own;
      for (int offset = 1; offset < 32; offset <<= 1) {
        const unsigned long long other = __shfl_up_sync(0xffffffffu, inclusive, offset);
        if (lane >= offset) inclusive += other;
      }
      const unsigned long long total = __shfl_sync(0xffffffffu, inclusive, 31);
      const unsigned long long remaining = shift == 24 ? target_of(total) : s.remaining;
      __syncwarp();
      const unsigned crossing = __ballot_sync(0xffffffffu, inclusive > remaining);
      // remaining < total always holds, so some lane crosses.
      if (lane == __ffs(crossing) - 1) {
        unsigned long long before = inclusive - own;
        for (int j = 0; j < 8; ++j) {
          const int digit = 255 - 8 * lane - j;
          if (before + s.bucket[digit] > remaining) {
            s.prefix = prefix | (static_cast<uint32_t>(digit) << shift);
            s.remaining = remaining - before;
            break;
          }
          before += s.bucket[digit];
        }
      }
    }
    __syncthreads();
    prefix = s.prefix;
    mask |= 0xffu << shift;
  }
  const unsigned long long remaining = s.remaining;
  __syncthreads();
  if (!with_id) return Position{prefix, -1};
  // Every token tied on this logit weighs the same.
  const unsigned long long tie_weight =
      kMass ? sampling_mass(key_value(prefix), filter.x_max, filter.inverse_temperature) : 1;
  return Position{prefix, nth_tied(c, filter, prefix, static_cast<int>(remaining / tie_weight), s)};
}

__global__ void __launch_bounds__(kThreads)
    sample_kernel(int32_t* __restrict__ tokens, const float* __restrict__ logits, int vocab,
                  const SamplingRule* __restrict__ rules) {
  wait_for_previous_kernel();  // programmatic dependent launch: see launch.cuh
  __shared__ Shared s;
  const SamplingRule rule = rules[blockIdx.x];
  const float* row = logits + static_cast<int64_t>(blockIdx.x) * vocab;

  float x_max;
  int best;
  block_argmax(row, vocab, s, x_max, best);
  if (rule.greedy) {
    if (threadIdx.x == 0) tokens[blockIdx.x] = best;
    return;
  }

  Filter filter;
  filter.x_max = x_max;
  filter.inverse_temperature = rule.inverse_temperature;
  Candidates candidates{row, nullptr, vocab};
  if (rule.top_k > 0) {
    const uint64_t kth = static_cast<uint64_t>(rule.top_k - 1);
    filter.min_key = locate<false>(candidates, filter, s, false, [&](uint64_t) { return kth; }).key;
    candidates = compact(candidates, filter, s);
  }
  if (rule.top_p_on) {
    // The last kept token holds mass position kept - 1; none kept but the best: position 0.
    const Position cut = locate<true>(candidates, filter, s, true, [&](uint64_t total) {
      const uint64_t kept = top_p_kept_mass(total, rule);
      return kept == 0 ? uint64_t{0} : kept - 1;
    });
    filter.cut_key = cut.key;
    filter.cut_id = cut.id;
    if (candidates.ids == nullptr) candidates = compact(candidates, filter, s);
  }
  filter.min_p = rule.min_p;
  const Position drawn =
      locate<true>(candidates, filter, s, true, [&](uint64_t total) { return draw_target(rule, total); });
  if (threadIdx.x == 0) tokens[blockIdx.x] = drawn.id;
}

}  // namespace

void sample(Context& ctx, int32_t* tokens, const float* logits, int64_t rows, int64_t vocab,
            std::span<const SamplingRequest> requests) {
  // Grows once to the largest batch: a decode step allocates nothing here.
  thread_local std::vector<SamplingRule> rules;
  rules.clear();
  for (const SamplingRequest& request : requests) rules.push_back(make_sampling_rule(request, vocab));
  if (rows == 0) return;
  const SamplingRule* device_rules = ctx.upload(std::span<const SamplingRule>(rules));
  launch(ctx, sample_kernel, dim3(static_cast<unsigned>(rows)), dim3(kThreads), 0, tokens, logits,
         static_cast<int>(vocab), device_rules);
}

}  // namespace glm::cuda
