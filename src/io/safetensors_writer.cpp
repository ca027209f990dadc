// SafetensorsWriter: a side file for the data, then header + data.
#include "io/safetensors_writer.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace glm {

SafetensorsWriter::SafetensorsWriter(std::string path) : path_(std::move(path)), side_path_(path_ + ".partial") {
  side_ = std::fopen(side_path_.c_str(), "wb+");
  GLM_CHECK(side_, "cannot create ", side_path_, ": ", std::strerror(errno));
}

SafetensorsWriter::~SafetensorsWriter() {
  if (side_) std::fclose(side_);
  if (!finished_) std::remove(side_path_.c_str());
}

void SafetensorsWriter::add(const std::string& name, DType dtype, const Shape& shape, std::span<const uint8_t> bytes) {
  GLM_CHECK(!finished_, "internal error: add after finish");
  const uint64_t expected = static_cast<uint64_t>(shape_numel(shape)) * dtype_size(dtype);
  GLM_CHECK(bytes.size() == expected, "internal error: tensor \"", name, "\" has ", bytes.size(), " bytes, shape ",
            shape_to_string(shape), " needs ", expected);
  for (const Entry& entry : entries_) GLM_CHECK(entry.name != name, "internal error: tensor \"", name, "\" added twice");
  if (!bytes.empty())
    GLM_CHECK(std::fwrite(bytes.data(), 1, bytes.size(), side_) == bytes.size(), "failed writing ", side_path_, ": ",
              std::strerror(errno));
  entries_.push_back({name, dtype, shape, offset_, offset_ + bytes.size()});
  offset_ += bytes.size();
}

void SafetensorsWriter::finish(const std::map<std::string, std::string>& metadata, bool drop_from_cache) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<const Entry*> sorted;
  for (const Entry& entry : entries_) sorted.push_back(&entry);
  std::sort(sorted.begin(), sorted.end(), [](const Entry* a, const Entry* b) { return a->name < b->name; });
  for (const Entry* entry : sorted)
    header[entry->name] = {{"dtype", std::string(dtype_name(entry->dtype))},
                           {"shape", entry->shape},
                           {"data_offsets", {entry->begin, entry->end}}};
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // keeps the data area 8-byte aligned

  std::FILE* out = std::fopen(path_.c_str(), "wb");
  GLM_CHECK(out, "cannot create ", path_, ": ", std::strerror(errno));
  const uint64_t length = text.size();
  uint8_t length_bytes[8];
  for (int i = 0; i < 8; ++i) length_bytes[i] = static_cast<uint8_t>(length >> (8 * i));
  bool ok = std::fwrite(length_bytes, 1, 8, out) == 8 && std::fwrite(text.data(), 1, text.size(), out) == text.size();
  std::rewind(side_);
  std::vector<uint8_t> buffer(size_t{8} << 20);
  size_t count;
  while (ok && (count = std::fread(buffer.data(), 1, buffer.size(), side_)) > 0)
    ok = std::fwrite(buffer.data(), 1, count, out) == count;
  // drop_from_cache: the pages came in the folios of write(), of mixed
  // sizes, and whoever maps the file next (bench --synthetic, at once) would
  // map most of them with 4 KiB entries; read back through a mapping they come
  // in 2 MiB pages (MappedFile). A synthetic int4 file straight from write()
  // had a third of its bytes in such pages. No effect on tmpfs, whose pages
  // cannot be dropped. (Not for quantize's shards: each would then wait for
  // its write-back; quantize drops them all at the end, drop_from_page_cache.)
  constexpr uint64_t kDropAfterBytes = uint64_t{256} << 20;
  ok = std::fclose(out) == 0 && ok;
  if (ok && drop_from_cache && offset_ >= kDropAfterBytes) drop_from_page_cache(path_);
  std::fclose(side_);
  side_ = nullptr;
  std::remove(side_path_.c_str());
  finished_ = true;
  GLM_CHECK(ok, "failed writing ", path_, ": ", std::strerror(errno));
}

void drop_from_page_cache(const std::string& path) {
  const int descriptor = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (descriptor < 0) return;
  if (::fdatasync(descriptor) == 0) ::posix_fadvise(descriptor, 0, 0, POSIX_FADV_DONTNEED);
  ::close(descriptor);
}

namespace {
// "12.3 GB" (decimal, as the benchmarks and the Hub report sizes).
std::string gigabytes(uint64_t bytes) {
  char text[32];
  std::snprintf(text, sizeof text, "%.1f GB", static_cast<double>(bytes) / 1e9);
  return text;
}
}  // namespace

void require_room_for_checkpoint(const std::string& directory, uint64_t total_bytes, uint64_t largest_shard_bytes,
                                 const std::string& what, const std::string& hint) {
  std::error_code error;
  const std::filesystem::space_info space = std::filesystem::space(directory, error);
  GLM_CHECK(!error, "cannot read the free space of ", directory, ": ", error.message());
  if (space.capacity == 0) return;  // a file system that reports no sizes (some FUSE ones): nothing to check
  const uint64_t needed = total_bytes + std::min(largest_shard_bytes, total_bytes) + (uint64_t{64} << 20);
  GLM_CHECK(space.available >= needed, what, " needs ", gigabytes(needed), " in ", directory, " (",
            gigabytes(total_bytes), " of tensors, and a shard's side file while it is written), which has ",
            gigabytes(space.available), " free", hint.empty() ? "" : " (" + hint + ")");
}

}  // namespace glm
