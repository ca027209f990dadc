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
// crosses the target. After 4 passes the logit is known exactly; tokens tied
// on it all weigh the same, so the index among them is a division, and one
// block-wide prefix count finds that tie in id order. One block reads a whole
// row per pass, so every pass keeps several loads in flight a thread and adds
// to the shared buckets once per run of a thread's tokens that share a digit
// (fill_buckets). Masses are integers, so the order in which threads add
// them changes nothing. Once a filter has left at most kCompactCapacity
// candidates (top-k 50, the usual setting, or a peaked distribution after
// top-p), they are copied into shared memory in id order and the remaining
// searches run over them instead of the whole row.
// A search over the whole row first tries one pass that buckets the tokens
// by how far their logit lies below the best (locate_by_distance): when the
// bucket where the target falls holds few enough tokens, they are compacted
// and the radix passes run over them alone.
#include <climits>

#include "backend/cuda/ops.cuh"
#include "backend/sampling_rule.h"

namespace glm::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kDigits = 256;  // 8 key bits per radix pass
constexpr int kCompactCapacity = 4096;
// locate_by_distance's buckets: 64 to a unit of (x_max - x) / T, so 2048
// cover the 32 units within which a token has any mass (exp(-32) * 2^44 < 1).
constexpr int kDistanceBuckets = 2048;
constexpr float kBucketsPerUnit = 64.0f;
static_assert(kDistanceBuckets % kThreads == 0, "each thread scans whole buckets");

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
  unsigned long long warp_weight[kWarps];
  union {  // never needed at once: the distance buckets are read before a compaction is written
    struct {
      float x[kCompactCapacity];  // compacted candidates, ascending id
      int id[kCompactCapacity];
    } compact;
    struct {  // weight (low and high words, as bucket_low/high) and token count of each bucket
      uint32_t low[kDistanceBuckets];
      uint32_t high[kDistanceBuckets];
      uint32_t count[kDistanceBuckets];
    } distance;
  };
  int crossing_bucket;                      // locate_by_distance's answer, to every thread
  unsigned long long crossing_remaining;
  uint32_t crossing_count;
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

  // Whether the filter keeps the token, and its weight in a search: 1 when
  // counting, its integer mass when summing masses (one exp serves min-p and
  // the mass).
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

  // Whether the filter keeps the token. (A weight is never NaN, so
  // `w < min_p` drops exactly the tokens `w >= min_p` would not keep.)
  __device__ bool keeps(float x, uint32_t key, int id) const {
    uint64_t weight;
    return weigh<false>(x, key, id, weight);
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
__device__ void add_weight(uint32_t* low_word, uint32_t* high_word, uint64_t weight) {
  const uint32_t low = static_cast<uint32_t>(weight), high = static_cast<uint32_t>(weight >> 32);
  const uint32_t before = atomicAdd(low_word, low);
  const uint32_t carried = high + (before + low < before ? 1u : 0u);
  if (carried) atomicAdd(high_word, carried);
}
__device__ void add_weight(Shared& s, int digit, uint64_t weight) {
  add_weight(&s.bucket_low[digit], &s.bucket_high[digit], weight);
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

// The sum of `count` over the threads before this one, and over all of them
// (int counts or 64-bit weights).
template <typename T>
__device__ T block_exclusive_prefix(T count, Shared& s, T& total) {
  T* warp_sums;
  if constexpr (sizeof(T) == sizeof(int)) warp_sums = reinterpret_cast<T*>(s.warp_count);
  else warp_sums = reinterpret_cast<T*>(s.warp_weight);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  T inclusive = count;
  for (int offset = 1; offset < 32; offset <<= 1) {
    const T other = __shfl_up_sync(0xffffffffu, inclusive, offset);
    if (lane >= offset) inclusive += other;
  }
  if (lane == 31) warp_sums[warp] = inclusive;
  __syncthreads();
  T before = inclusive - count;
  total = 0;
  for (int w = 0; w < kWarps; ++w) {
    if (w < warp) before += warp_sums[w];
    total += warp_sums[w];
  }
  __syncthreads();  // the warp sums may be reused
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

// The candidates for which kept(x, id) holds, copied into shared memory in
// id order when there are at most kCompactCapacity of them; else `c` itself.
template <typename Kept>
__device__ Candidates compact_where(const Candidates& c, Kept kept, Shared& s) {
  int begin, end, total;
  thread_range(c.count, begin, end);
  int count = 0;
  for (int i = begin; i < end; ++i) count += kept(c.x[i], c.id(i));
  int slot = block_exclusive_prefix(count, s, total);
  if (total > kCompactCapacity) return c;  // the same decision in every thread
  for (int i = begin; i < end; ++i) {
    const float x = c.x[i];
    const int id = c.id(i);
    if (!kept(x, id)) continue;
    s.compact.x[slot] = x;
    s.compact.id[slot] = id;
    ++slot;
  }
  __syncthreads();
  return Candidates{s.compact.x, s.compact.id, total};
}

// The candidates the filter keeps, compacted when they fit.
__device__ Candidates compact(const Candidates& c, const Filter& filter, Shared& s) {
  return compact_where(c, [&](float x, int id) { return filter.keeps(x, order_key(x), id); }, s);
}

// The first eligible token, in order, whose cumulative weight exceeds
// target_of(total weight), by radix selection. with_id false skips finding
// which of several tokens tied on that logit it is (top-k needs only the logit).
template <bool kMass, typename Target>
__device__ Position radix_locate(const Candidates& c, const Filter& filter, Shared& s, bool with_id,
                                 Target target_of) {
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

// Which distance bucket a token falls in: how far its logit lies below the
// best, in units of T / 64, the last bucket also holding every token further
// down (no mass; -inf). Rounded subtraction and products are monotone, so the
// bucket never rises with the logit: each bucket holds one stretch of the
// order (logit descending, id ascending), and the buckets follow the order.
__device__ int distance_bucket(float x, const Filter& filter) {
  if (x == filter.x_max) return 0;  // (0 times an infinite 1/T would be NaN)
  const float units = mul_rn(mul_rn(sub_rn(filter.x_max, x), filter.inverse_temperature), kBucketsPerUnit);
  return units < static_cast<float>(kDistanceBuckets - 1) ? static_cast<int>(units) : kDistanceBuckets - 1;
}

// radix_locate's answer over a whole row in one pass and a compaction, when
// that works: the pass sums the eligible tokens' weights (and counts them)
// by distance bucket; the bucket where the cumulative weight crosses the
// target holds the answer, and when its tokens fit they are compacted and
// searched alone for the target less the weight of the buckets before it.
// false (nothing found) when the bucket holds too many tokens: a flat row,
// or a temperature so high that the whole row is one bucket.
template <bool kMass, typename Target>
__device__ bool locate_by_distance(const Candidates& c, const Filter& filter, Shared& s, bool with_id,
                                   Target target_of, Position& found) {
  for (int b = threadIdx.x; b < kDistanceBuckets; b += kThreads)
    s.distance.low[b] = s.distance.high[b] = s.distance.count[b] = 0;
  __syncthreads();
  // The same tokens and weights as radix_locate's passes: zero weights add nothing.
  auto weigh = [&](float x, int id, uint64_t& weight) {
    return filter.weigh<kMass>(x, order_key(x), id, weight) && weight != 0;
  };
  for_each_owned<4>(c, [&](float x, int i) {
    uint64_t weight;
    if (!weigh(x, c.id(i), weight)) return;
    const int b = distance_bucket(x, filter);
    add_weight(&s.distance.low[b], &s.distance.high[b], weight);
    if constexpr (kMass) atomicAdd(&s.distance.count[b], 1u);  // (counting: the weight is the count)
  });
  __syncthreads();
  // Thread t scans buckets [t * kOwned, (t + 1) * kOwned): thread order is bucket order.
  constexpr int kOwned = kDistanceBuckets / kThreads;
  const int first = static_cast<int>(threadIdx.x) * kOwned;
  auto bucket_weight = [&](int b) {
    return (static_cast<unsigned long long>(s.distance.high[b]) << 32) | s.distance.low[b];
  };
  unsigned long long own = 0;
  for (int j = 0; j < kOwned; ++j) own += bucket_weight(first + j);
  unsigned long long total;
  unsigned long long before = block_exclusive_prefix(own, s, total);
  const unsigned long long target = target_of(total);
  if (before <= target && target < before + own) {  // one thread: target < total
    for (int b = first; b < first + kOwned; ++b) {
      const unsigned long long weight = bucket_weight(b);
      if (before + weight > target) {
        s.crossing_bucket = b;
        s.crossing_remaining = target - before;
        s.crossing_count = kMass ? s.distance.count[b] : static_cast<uint32_t>(weight);
        break;
      }
      before += weight;
    }
  }
  __syncthreads();
  const int bucket = s.crossing_bucket;
  const unsigned long long remaining = s.crossing_remaining;
  const uint32_t count = s.crossing_count;
  __syncthreads();  // the compaction below overwrites the buckets
  if (count > kCompactCapacity) return false;
  const Candidates in_bucket = compact_where(
      c, [&](float x, int id) {
        uint64_t weight;
        return distance_bucket(x, filter) == bucket && weigh(x, id, weight);
      }, s);
  if (in_bucket.ids == nullptr) return false;  // (cannot happen: it holds `count` tokens)
  found = radix_locate<kMass>(in_bucket, filter, s, with_id, [&](uint64_t) { return remaining; });
  return true;
}

// The first eligible token, in order, whose cumulative weight exceeds
// target_of(total weight): over a whole row by distance first when it can.
template <bool kMass, typename Target>
__device__ Position locate(const Candidates& c, const Filter& filter, Shared& s, bool with_id, Target target_of) {
  if (c.ids == nullptr && c.count > kCompactCapacity) {
    Position found;
    if (locate_by_distance<kMass>(c, filter, s, with_id, target_of, found)) return found;
  }
  return radix_locate<kMass>(c, filter, s, with_id, target_of);
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
