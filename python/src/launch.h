// m2n/launch.h's bindings (launch.cc): detect_launch, pick_free_port, spawn_local.
#pragma once

#include <nanobind/nanobind.h>

namespace m2n::python {
void BindLaunch(nanobind::module_& m);
}  // namespace m2n::python
