// The extension module m2n._m2n: Group, Message, MemoryRegion (group.cc), ExpertParallel and
// ExpertBatch (ep.cc, re-exported as m2n.ep) and the module-level facts of this build.
// python/m2n/__init__.py re-exports it with the error classes.
#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include "group.h"
#include "launch.h"
#include "m2n/m2n.h"

namespace nb = nanobind;

NB_MODULE(_m2n, m) {
  m.doc() = "m2n: M senders to N receivers over one-sided writes (bindings of include/m2n/).";
  m.attr("__version__") = m2n::kVersionString;
  m.def("available_transports", &m2n::AvailableTransports,
        "Names of the transports compiled into this build, best first (\"ucx\", ...).");
  m.def(
      "environment_table",
      [] {
        nb::list rows;
        for (const m2n::EnvironmentVariable& v : m2n::EnvironmentTable()) {
          rows.append(
              nb::make_tuple(std::string(v.name), std::string(v.field), std::string(v.meaning)));
        }
        return rows;
      },
      "The M2N_* variables a Group reads: (name, option field, meaning) rows.");
  m2n::python::BindGroup(m);
  m2n::python::BindLaunch(m);
  m2n::python::BindExpertParallel(m);
}
