// Memory-mapped safetensors files and checkpoint directories. The header is
// untrusted: nothing in it is used to form a pointer until every offset,
// shape and dtype has been checked against the file's real size.
#include "io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string_view>
#include <system_error>

#include "io/json_util.h"

namespace glm {

namespace {

// A header this large is far beyond any real checkpoint's (they are a few MB
// at most); the limit keeps a corrupt length prefix from driving a huge parse.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;

std::string quoted(const std::string& text) { return "\"" + text + "\""; }

// Reads one tensor's entry; `data_bytes` is the size of the data area the offsets must fall in.
SafetensorsEntry parse_entry(const std::string& name, const nlohmann::json& spec, uint64_t data_bytes,
                             const std::string& what) {
  const std::string tensor = "tensor " + quoted(name);
  if (!spec.is_object())
    fail(what, ": ", tensor, " must be a JSON object, found ", json_type_name(spec), " ", json_excerpt(spec));
  for (const auto& [key, value] : spec.items()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      fail(what, ": ", tensor, " has unexpected field ", quoted(key), " (only dtype, shape, data_offsets)");
  }
  for (const char* required : {"dtype", "shape", "data_offsets"}) {
    if (!spec.contains(required)) fail(what, ": ", tensor, " has no ", required);
  }

  SafetensorsEntry entry;
  entry.name = name;

  const nlohmann::json& dtype = spec["dtype"];
  if (!dtype.is_string()) fail(what, ": ", tensor, " dtype must be a string, found ", json_excerpt(dtype));
  if (!parse_dtype(dtype.get_ref<const std::string&>(), &entry.dtype))
    fail(what, ": ", tensor, " has unknown dtype ", json_excerpt(dtype));

  const nlohmann::json& shape = spec["shape"];
  if (!shape.is_array()) fail(what, ": ", tensor, " shape must be an array, found ", json_excerpt(shape));
  // Checked in unsigned arithmetic so that a hostile shape cannot overflow into a small, plausible size.
  if (shape.size() > Shape::kMaxRank)
    fail(what, ": ", tensor, " shape ", json_excerpt(shape), " has ", shape.size(), " dimensions (at most ",
         Shape::kMaxRank, " are supported)");
  uint64_t numel = 1;
  bool numel_overflows = false;
  for (const nlohmann::json& extent_json : shape) {
    int64_t extent = 0;
    if (!json_exact_int64(extent_json, &extent) || extent < 0)
      fail(what, ": ", tensor, " shape ", json_excerpt(shape), " has extent ", json_excerpt(extent_json),
           " (must be a non-negative integer)");
    entry.shape.push_back(extent);
    numel_overflows = numel_overflows || __builtin_mul_overflow(numel, static_cast<uint64_t>(extent), &numel);
  }
  uint64_t byte_size = 0;
  if (numel_overflows || numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
      __builtin_mul_overflow(numel, static_cast<uint64_t>(dtype_size(entry.dtype)), &byte_size))
    fail(what, ": ", tensor, " shape ", json_excerpt(shape), " has too many elements");

  const nlohmann::json& offsets = spec["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() ||
      !offsets[1].is_number_unsigned())
    fail(what, ": ", tensor, " data_offsets must be two non-negative integers [begin, end], found ",
         json_excerpt(offsets));
  entry.begin = offsets[0].get<uint64_t>();
  entry.end = offsets[1].get<uint64_t>();
  const std::string range = "[" + std::to_string(entry.begin) + ", " + std::to_string(entry.end) + "]";
  if (entry.begin > entry.end) fail(what, ": ", tensor, " data_offsets ", range, " end before begin");
  if (entry.end > data_bytes)
    fail(what, ": ", tensor, " data_offsets ", range, " exceed the data area of ", data_bytes, " bytes");
  if (entry.end - entry.begin != byte_size)
    fail(what, ": ", tensor, " data_offsets ", range, " span ", entry.end - entry.begin, " bytes but ",
         dtype_name(entry.dtype), " ", shape_to_string(entry.shape), " needs ", byte_size);
  return entry;
}

void parse_metadata(const nlohmann::json& metadata_json, const std::string& what,
                    std::map<std::string, std::string>* metadata) {
  if (!metadata_json.is_object())
    fail(what, ": __metadata__ must be an object of strings, found ", json_excerpt(metadata_json));
  for (const auto& [key, value] : metadata_json.items()) {
    if (!value.is_string())
      fail(what, ": __metadata__ ", quoted(key), " must be a string, found ", json_excerpt(value));
    if (metadata) (*metadata)[key] = value.get<std::string>();
  }
}

// Tensors may share no byte; zero-size tensors occupy none, so they never overlap.
void check_no_overlap(const std::vector<SafetensorsEntry>& entries, const std::string& what) {
  std::vector<const SafetensorsEntry*> by_begin;
  for (const auto& entry : entries)
    if (entry.end > entry.begin) by_begin.push_back(&entry);
  std::sort(by_begin.begin(), by_begin.end(), [](const SafetensorsEntry* a, const SafetensorsEntry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->name < b->name;
  });
  for (size_t i = 1; i < by_begin.size(); ++i) {
    const SafetensorsEntry& previous = *by_begin[i - 1];
    const SafetensorsEntry& current = *by_begin[i];
    if (current.begin < previous.end)
      fail(what, ": tensors ", quoted(previous.name), " [", previous.begin, ", ", previous.end, "] and ",
           quoted(current.name), " [", current.begin, ", ", current.end, "] overlap");
  }
}

bool path_is_directory(const std::filesystem::path& path) {
  std::error_code error;
  return std::filesystem::is_directory(path, error);
}

bool path_exists(const std::filesystem::path& path) {
  std::error_code error;
  return std::filesystem::exists(path, error);
}

}  // namespace

MappedFile::MappedFile(const std::string& path) : path_(path) {
  const int descriptor = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (descriptor < 0) fail(path, ": cannot open: ", std::strerror(errno));
  struct stat status {};
  if (::fstat(descriptor, &status) != 0) {
    const int saved = errno;
    ::close(descriptor);
    fail(path, ": cannot stat: ", std::strerror(saved));
  }
  if (!S_ISREG(status.st_mode)) {
    ::close(descriptor);
    fail(path, ": not a regular file");
  }
  size_ = static_cast<size_t>(status.st_size);
  // mmap rejects a zero length; an empty file simply has no bytes to view.
  if (size_ > 0) {
    void* mapping = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, descriptor, 0);
    if (mapping == MAP_FAILED) {
      const int saved = errno;
      ::close(descriptor);
      fail(path, ": cannot mmap ", size_, " bytes: ", std::strerror(saved));
    }
    data_ = static_cast<const uint8_t*>(mapping);
    // Pages of a file read through a mapping come in large folios (Linux 6.x,
    // ext4/xfs), and with this advice in 2 MiB ones mapped by one page-table
    // entry each (FilePmdMapped in /proc/self/smaps). Decoding streams GBs of
    // weights a token; with 4 KiB entries every page is a TLB miss, doubly
    // costly in a VM. int4 decode on the Zen 4 VM, the same file mapped both
    // ways in one process, in turns: +2.4%. Advice: failure is harmless.
    ::madvise(mapping, size_, MADV_HUGEPAGE);
  }
  ::close(descriptor);  // the mapping stays valid without the descriptor
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

std::vector<SafetensorsEntry> parse_safetensors_header(const uint8_t* bytes, size_t size, const std::string& what,
                                                       uint64_t* data_start,
                                                       std::map<std::string, std::string>* metadata) {
  if (size < 8) fail(what, ": file is ", size, " bytes, too short for the 8-byte header length");
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | bytes[i];  // little-endian on any host
  if (header_bytes > kMaxHeaderBytes)
    fail(what, ": header length ", header_bytes, " exceeds the limit of ", kMaxHeaderBytes, " bytes");
  if (header_bytes > size - 8)
    fail(what, ": header length ", header_bytes, " exceeds the ", size - 8, " bytes after the length prefix");
  const uint64_t data_bytes = size - 8 - header_bytes;

  const std::string_view header_text(reinterpret_cast<const char*>(bytes + 8), header_bytes);
  const nlohmann::json header = parse_json(header_text, what, "header");
  if (!header.is_object())
    fail(what, ": header must be a JSON object, found ", json_type_name(header), " ", json_excerpt(header));

  if (metadata) metadata->clear();
  std::vector<SafetensorsEntry> entries;
  for (const auto& [name, spec] : header.items()) {
    if (name == "__metadata__")
      parse_metadata(spec, what, metadata);
    else
      entries.push_back(parse_entry(name, spec, data_bytes, what));
  }
  check_no_overlap(entries, what);
  std::sort(entries.begin(), entries.end(),
            [](const SafetensorsEntry& a, const SafetensorsEntry& b) { return a.name < b.name; });
  if (data_start) *data_start = 8 + header_bytes;
  return entries;
}

SafetensorsFile::SafetensorsFile(const std::string& path) : file_(path) {
  entries_ = parse_safetensors_header(file_.data(), file_.size(), path, &data_start_, &metadata_);
}

const SafetensorsEntry* SafetensorsFile::find(const std::string& name) const {
  const auto found = std::lower_bound(entries_.begin(), entries_.end(), name,
                                      [](const SafetensorsEntry& entry, const std::string& key) { return entry.name < key; });
  if (found == entries_.end() || found->name != name) return nullptr;
  return &*found;
}

TensorView SafetensorsFile::view(const std::string& name) const {
  const SafetensorsEntry* entry = find(name);
  if (!entry) fail(path(), ": no tensor named ", quoted(name));
  return TensorView(file_.data() + data_start_ + entry->begin, entry->dtype, entry->shape);
}

Checkpoint::Checkpoint(const std::string& directory) : directory_(directory) {
  const std::filesystem::path root(directory);
  if (!path_exists(root)) fail("model directory ", directory, " does not exist");
  if (!path_is_directory(root)) fail("model directory ", directory, " is not a directory");

  const std::filesystem::path index_path = root / "model.safetensors.index.json";
  if (path_exists(index_path)) {
    const std::string what = index_path.string();
    const nlohmann::json index = parse_json(read_text_file(what), what);
    if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
      fail(what, ": expected an object with a \"weight_map\" object");

    // Every shard is checked before any is mapped, so one message can name all the missing ones.
    std::vector<std::string> shards;
    for (const auto& [tensor, shard_json] : index["weight_map"].items()) {
      if (!shard_json.is_string())
        fail(what, ": weight_map entry for tensor ", quoted(tensor), " must be a file name, found ",
             json_excerpt(shard_json));
      const std::string& shard = shard_json.get_ref<const std::string&>();
      // The index is untrusted: a shard name must not reach outside the model directory.
      if (shard.empty() || shard.find_first_of(std::string("/\0", 2)) != std::string::npos || shard == "." ||
          shard == "..")
        fail(what, ": weight_map names shard ", json_excerpt(shard_json), " for tensor ", quoted(tensor),
             ", which is not a plain file name");
      if (std::find(shards.begin(), shards.end(), shard) == shards.end()) shards.push_back(shard);
    }
    std::string missing_shards;
    for (const auto& shard : shards)
      if (!path_exists(root / shard)) missing_shards += (missing_shards.empty() ? "" : ", ") + shard;
    if (!missing_shards.empty()) fail(what, ": shard files missing from ", directory, ": ", missing_shards);

    std::map<std::string, size_t> shard_of_file;  // each shard is mapped once however many tensors it holds
    for (const auto& shard : shards) {
      shard_of_file[shard] = files_.size();
      files_.push_back(std::make_unique<SafetensorsFile>((root / shard).string()));
    }
    for (const auto& [tensor, shard_json] : index["weight_map"].items()) {
      const size_t file = shard_of_file.at(shard_json.get<std::string>());
      if (!files_[file]->find(tensor))
        fail(what, ": tensor ", quoted(tensor), " is listed in shard ", shard_json.get<std::string>(),
             ", which does not contain it");
      index_[tensor] = file;
    }
    return;
  }

  std::vector<std::filesystem::path> shard_paths;
  std::error_code error;
  for (std::filesystem::directory_iterator it(root, error), end; !error && it != end; it.increment(error)) {
    std::error_code type_error;
    if (it->path().extension() == ".safetensors" && it->is_regular_file(type_error)) shard_paths.push_back(it->path());
  }
  if (error) fail("model directory ", directory, ": cannot list: ", error.message());
  if (shard_paths.empty())
    fail("model directory ", directory, " has no *.safetensors files (and no model.safetensors.index.json)");
  std::sort(shard_paths.begin(), shard_paths.end());
  for (const auto& shard_path : shard_paths) {
    files_.push_back(std::make_unique<SafetensorsFile>(shard_path.string()));
    const size_t file = files_.size() - 1;
    for (const auto& entry : files_[file]->entries()) {
      const auto [existing, inserted] = index_.emplace(entry.name, file);
      if (!inserted)
        fail("model directory ", directory, ": tensor ", quoted(entry.name), " appears in both ",
             files_[existing->second]->path(), " and ", files_[file]->path());
    }
  }
}

const SafetensorsEntry* Checkpoint::find(const std::string& name) const {
  const auto found = index_.find(name);
  if (found == index_.end()) return nullptr;
  return files_[found->second]->find(name);
}

TensorView Checkpoint::view(const std::string& name) const {
  const auto found = index_.find(name);
  if (found == index_.end()) fail("model directory ", directory_, ": checkpoint has no tensor named ", quoted(name));
  return files_[found->second]->view(name);
}

std::vector<std::string> Checkpoint::names() const {
  std::vector<std::string> result;
  result.reserve(index_.size());
  for (const auto& [name, file] : index_) result.push_back(name);
  return result;
}

uint64_t Checkpoint::total_bytes() const {
  uint64_t total = 0;
  for (const auto& [name, file] : index_) {
    const SafetensorsEntry* entry = files_[file]->find(name);
    total += entry->end - entry->begin;
  }
  return total;
}

void Checkpoint::touch_all_pages() const {
  for (const auto& file : files_) {
    const uint8_t* data = file->mapping().data();
    const size_t size = file->mapping().size();
    const size_t page = 4096;
    uint64_t sum = 0;
#pragma omp parallel for reduction(+ : sum) schedule(static)
    for (size_t offset = 0; offset < size; offset += page) sum += data[offset];
    volatile uint64_t sink = sum;  // keeps the reads
    (void)sink;
  }
}

}  // namespace glm
