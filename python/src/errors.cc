// Builds m2n.errors exceptions from a Status (errors.h).
#include "errors.h"

#include <nanobind/nanobind.h>
#include <nanobind/stl/string.h>

#include <string>

namespace nb = nanobind;

namespace m2n::python {

void ThrowStatus(const Status& status) {
  // errors.error_for(code, name, message) picks the subclass and builds the exception.
  nb::object errors = nb::module_::import_("m2n.errors");
  nb::object exception =
      errors.attr("error_for")(static_cast<int>(status.code()),
                               std::string(StatusCodeName(status.code())), status.message());
  PyErr_SetObject(reinterpret_cast<PyObject*>(Py_TYPE(exception.ptr())), exception.ptr());
  throw nb::python_error();
}

}  // namespace m2n::python
