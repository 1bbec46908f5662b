// A main() for the fuzz target where libFuzzer is not available (GCC): runs
// LLVMFuzzerTestOneInput once on every file named on the command line or found in a named
// folder (sorted, not recursive), as `fuzz_target CORPUS_DIR...` does with libFuzzer's
// -runs=0. Arguments starting with '-' are libFuzzer flags and are ignored.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

namespace {

bool run_file(const std::filesystem::path& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) {
    std::fprintf(stderr, "replay: cannot read %s\n", path.c_str());
    return false;
  }
  const std::vector<uint8_t> bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  LLVMFuzzerTestOneInput(bytes.data(), bytes.size());
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  size_t inputs = 0;
  bool ok = true;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (!arg.empty() && arg[0] == '-') continue;
    const std::filesystem::path path(arg);
    if (std::filesystem::is_directory(path)) {
      std::vector<std::filesystem::path> files;
      for (const auto& entry : std::filesystem::directory_iterator(path)) {
        if (entry.is_regular_file()) files.push_back(entry.path());
      }
      std::sort(files.begin(), files.end());
      for (const auto& file : files) ok = run_file(file) && ok, ++inputs;
    } else {
      ok = run_file(path) && ok, ++inputs;
    }
  }
  if (inputs == 0) {
    std::fprintf(stderr, "usage: %s CORPUS_DIR_OR_FILE... (one pass over each input)\n", argv[0]);
    return 2;
  }
  std::printf("replay: %zu inputs passed\n", inputs);
  return ok ? 0 : 1;
}
