// The one place where procpaint's operator schemas are declared (TORCH_LIBRARY may appear
// once per namespace), and the Python module init of procpaint._C.
//
// Layout (setup.py globs it): csrc/<family>/schemas.h declares a family's schemas;
// <family>_cpu.cpp holds CPU kernels + TORCH_LIBRARY_IMPL(procpaint, CPU, ...); <family>_meta.cpp the
// Meta (shape-only) implementations; <family>_checks.h the argument checks all of them call
// (error types: common/checks.h);
// <family>_kernels.cu holds CUDA kernels and launchers on raw pointers (CUDA headers only, so
// it compiles with a bare toolkit); <family>_cuda.cpp is the torch-facing CUDA glue, built only
// in CUDA builds.
#include <Python.h>
#include <torch/library.h>

#include "flow/schemas.h"
#include "packing/schemas.h"

#ifndef PROCPAINT_TORCH_VERSION
#define PROCPAINT_TORCH_VERSION "unknown"
#endif
#ifndef PROCPAINT_SOURCES_HASH
#define PROCPAINT_SOURCES_HASH "unknown"
#endif
#ifdef PROCPAINT_WITH_CUDA
#define PROCPAINT_CUDA_FLAG 1
#else
#define PROCPAINT_CUDA_FLAG 0
#endif

TORCH_LIBRARY(procpaint, m) {
  procpaint::define_packing_ops(m);
  procpaint::define_flow_ops(m);
}

// A plain CPython module (no pybind11): importing procpaint._C runs the static registrations
// above; the attributes let procpaint/_ext.py detect an extension built for another torch or
// from older sources.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C",
                                          "procpaint native ops (see torch.ops.procpaint)", -1,
                                          nullptr};
  PyObject* mod = PyModule_Create(&module_def);
  if (mod == nullptr) return nullptr;
  if (PyModule_AddStringConstant(mod, "torch_version", PROCPAINT_TORCH_VERSION) < 0 ||
      PyModule_AddStringConstant(mod, "sources_hash", PROCPAINT_SOURCES_HASH) < 0 ||
      PyModule_AddIntConstant(mod, "with_cuda", PROCPAINT_CUDA_FLAG) < 0) {
    Py_DECREF(mod);
    return nullptr;
  }
  return mod;
}
