// host_emulation.cpp: runs the kernels of kuramoto.cu on the CPU, one emulated thread after another.
//
// For tests on machines without a GPU (tests/test_cuda_emulation.py). The kernel bodies are compiled
// unchanged as host C++ (kuramoto.cu's LOTSIM_HOST_EMULATION shim); this file adds a launcher with
// the calling convention of cuLaunchKernel (an array of pointers to the argument values) and, per
// kernel, a signature string, so the Python side can check every argument's type and order exactly
// as the GPU would read them. What it cannot check: warp shuffles, shared memory, timing.
//
// Build (any C++17 compiler; tested with g++ 12.2):
//   g++ -std=c++17 -O2 -Wall -Werror -shared -fPIC cuda/host_emulation.cpp -o libkuramoto_emulation.so
//
// Exported C functions:
//   const char* lotsim_emu_signature(const char* name)   "pf,pd,i,q,Q,f,d,..." or nullptr if unknown
//   const char* lotsim_emu_names()                        all name expressions, comma-separated
//   int lotsim_emu_launch(const char* name, unsigned gx, unsigned gy, unsigned bx, void** args)
//   void lotsim_emu_philox(const unsigned* counter4, const unsigned* key2, unsigned* out4)
//   double lotsim_emu_normal(unsigned long long seed, unsigned long long step, int b, int i, int dbl)
//   int lotsim_emu_max_harmonics()

#define LOTSIM_HOST_EMULATION 1
#include "kuramoto.cu"

#include <functional>
#include <map>
#include <string>
#include <type_traits>
#include <utility>

namespace {

// Type codes: f float, d double, i int, q long long, Q unsigned long long; p<code> pointer.
template <typename A> struct Code;
template <> struct Code<float> { static std::string get() { return "f"; } };
template <> struct Code<double> { static std::string get() { return "d"; } };
template <> struct Code<int> { static std::string get() { return "i"; } };
template <> struct Code<long long> { static std::string get() { return "q"; } };
template <> struct Code<unsigned long long> { static std::string get() { return "Q"; } };
template <typename A> struct Code<A*> { static std::string get() { return "p" + Code<std::remove_cv_t<A>>::get(); } };

template <typename... A>
std::string signature() {
  std::string out;
  ((out += (out.empty() ? "" : ",") + Code<std::remove_cv_t<A>>::get()), ...);
  return out;
}

template <typename... A, std::size_t... I>
void call(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
  kernel(*static_cast<std::remove_cv_t<A>*>(args[I])...);
}

struct Entry {
  std::string signature;
  std::function<void(void**)> run;
};

template <typename... A>
Entry entry(void (*kernel)(A...)) {
  return {signature<A...>(), [kernel](void** args) { call(kernel, args, std::index_sequence_for<A...>{}); }};
}

#define LOTSIM_REGISTER(name) {#name "<float>", entry(&name<float>)}, {#name "<double>", entry(&name<double>)},

const std::map<std::string, Entry>& registry() {
  static const std::map<std::string, Entry> kernels = {
      LOTSIM_REGISTER(kuramoto_sincos)
      LOTSIM_REGISTER(kuramoto_reduce)
      LOTSIM_REGISTER(kuramoto_stage_neighbour)
      LOTSIM_REGISTER(kuramoto_stage_csr)
      LOTSIM_REGISTER(kuramoto_stage_meanfield)
  };
  return kernels;
}

}  // namespace

extern "C" const char* lotsim_emu_signature(const char* name) {
  const auto it = registry().find(name);
  return it == registry().end() ? nullptr : it->second.signature.c_str();
}

extern "C" const char* lotsim_emu_names() {
  static std::string names;
  if (names.empty()) {
    for (const auto& item : registry()) names += (names.empty() ? "" : ",") + item.first;
  }
  return names.c_str();
}

// Runs the grid block by block and every block thread by thread (threadIdx.x ascending), which is a
// valid schedule for these kernels: threads only communicate through lot_block_sum.
extern "C" int lotsim_emu_launch(const char* name, unsigned gx, unsigned gy, unsigned bx, void** args) {
  const auto it = registry().find(name);
  if (it == registry().end()) return 1;
  if (bx == 0 || bx > 1024 || bx % 32 != 0 || gx == 0 || gy == 0 || gy > 65535) return 2;
  gridDim = {gx, gy, 1};
  blockDim = {bx, 1, 1};
  for (unsigned y = 0; y < gy; ++y) {
    for (unsigned x = 0; x < gx; ++x) {
      blockIdx = {x, y, 0};
      for (unsigned t = 0; t < bx; ++t) {
        threadIdx = {t, 0, 0};
        it->second.run(args);
      }
    }
  }
  return 0;
}

extern "C" void lotsim_emu_philox(const unsigned* counter, const unsigned* key, unsigned* out) {
  const LotsimPhilox r = lot_philox4x32_10(counter[0], counter[1], counter[2], counter[3], key[0], key[1]);
  for (int k = 0; k < 4; ++k) out[k] = r.v[k];
}

extern "C" double lotsim_emu_normal(unsigned long long seed, unsigned long long step, int b, int i, int dbl) {
  return dbl ? lot_normal<double>(seed, step, b, i) : (double)lot_normal<float>(seed, step, b, i);
}

extern "C" int lotsim_emu_max_harmonics() { return LOTSIM_MAX_HARMONICS; }
