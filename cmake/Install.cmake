# Install rules: headers, libm2n (static or shared, BUILD_SHARED_LIBS), the CMake package
# (m2nConfig.cmake, m2nConfigVersion.cmake, the exported target m2n::m2n) and m2n.pc.
#
# What a consumer links (docs/packaging.md): a shared libm2n carries UCX, ibverbs and hwloc as its
# own PRIVATE dependencies, so a consumer links libm2n.so alone and needs none of their headers;
# the CUDA driver is opened at run time (dlopen) by the transports that use it. A static libm2n.a
# cannot hide them: the archive's objects reference them, so the exported target lists them as
# link-only dependencies, m2nConfig.cmake find_dependency()s them, and m2n.pc names them.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(M2N_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/m2n CACHE STRING
    "Where m2nConfig.cmake goes, relative to the prefix")

target_include_directories(m2n PUBLIC $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
# The public headers use C++20 (std::span): consumers of the target compile as C++20 at least.
target_compile_features(m2n PUBLIC cxx_std_20)
set_target_properties(m2n PROPERTIES
  EXPORT_NAME m2n
  VERSION ${PROJECT_VERSION}
  SOVERSION ${PROJECT_VERSION_MAJOR}.${PROJECT_VERSION_MINOR})

# A static libm2n.a already holds the transports' objects (src/CMakeLists.txt links their OBJECT
# libraries), so the exported link interface must not name those build-tree targets; it names what
# they link instead (UCX, ibverbs, CUDA runtime), which m2nConfig.cmake finds again. A shared
# libm2n.so keeps them all PRIVATE and exports none.
get_target_property(_m2n_type m2n TYPE)
if(_m2n_type STREQUAL "STATIC_LIBRARY")
  get_target_property(_m2n_iface m2n INTERFACE_LINK_LIBRARIES)
  set(_m2n_new_iface "")
  foreach(item IN LISTS _m2n_iface)
    if(item MATCHES "^\\$<LINK_ONLY:(m2n_transport[a-z_]*|m2n_base)>$")
      list(APPEND _m2n_new_iface "$<LINK_ONLY:$<BUILD_INTERFACE:${CMAKE_MATCH_1}>>")
      get_target_property(_m2n_deps ${CMAKE_MATCH_1} INTERFACE_LINK_LIBRARIES)
      foreach(dep IN LISTS _m2n_deps)
        if(dep MATCHES "^m2n_")  # another object library of this build, already in the archive
          list(APPEND _m2n_new_iface "$<LINK_ONLY:$<BUILD_INTERFACE:${dep}>>")
        elseif(dep)
          list(APPEND _m2n_new_iface "$<LINK_ONLY:$<INSTALL_INTERFACE:${dep}>>")
        endif()
      endforeach()
    else()
      list(APPEND _m2n_new_iface "${item}")
    endif()
  endforeach()
  set_property(TARGET m2n PROPERTY INTERFACE_LINK_LIBRARIES "${_m2n_new_iface}")
endif()

install(TARGETS m2n EXPORT m2nTargets
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/m2n DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(FILES ${PROJECT_BINARY_DIR}/include/m2n/version.h DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/m2n)
install(EXPORT m2nTargets NAMESPACE m2n:: DESTINATION ${M2N_INSTALL_CMAKEDIR})

# What the static archive needs from the consumer's link line, for the config file and m2n.pc.
set(M2N_STATIC_PACKAGE OFF)
set(M2N_PC_REQUIRES "")
set(M2N_PC_LIBS_DEPS "")
if(_m2n_type STREQUAL "STATIC_LIBRARY")
  set(M2N_STATIC_PACKAGE ON)
  if(TARGET m2n_transport_ucx)
    string(APPEND M2N_PC_REQUIRES " ucx")
  endif()
  if(M2N_HAVE_HWLOC)
    string(APPEND M2N_PC_REQUIRES " hwloc")
  endif()
  if(TARGET m2n_transport_verbs)
    string(APPEND M2N_PC_LIBS_DEPS " ${M2N_IBVERBS_LIBRARY}")
  endif()
  if(TARGET m2n_transport_cuda_ipc)
    string(APPEND M2N_PC_LIBS_DEPS " -L${CUDAToolkit_LIBRARY_DIR} -lcudart")
  endif()
  foreach(lib IN LISTS CMAKE_DL_LIBS)
    string(APPEND M2N_PC_LIBS_DEPS " -l${lib}")
  endforeach()
  string(APPEND M2N_PC_LIBS_DEPS " -pthread")
  set(M2N_PC_REQUIRES_FIELD "Requires:${M2N_PC_REQUIRES}")
  set(M2N_PC_LIBS_FIELD "Libs: -L\${libdir} -lm2n${M2N_PC_LIBS_DEPS}")
else()
  # Shared: the dependencies are the library's own business; -pthread for the public headers' use
  # of threads is all a consumer adds.
  set(M2N_PC_REQUIRES_FIELD "Requires:")
  set(M2N_PC_LIBS_FIELD "Libs: -L\${libdir} -lm2n -pthread")
endif()
set(M2N_HAVE_UCX_TARGET OFF)
if(TARGET m2n_transport_ucx)
  set(M2N_HAVE_UCX_TARGET ON)
endif()
set(M2N_HAVE_CUDA_TARGET OFF)
if(TARGET m2n_transport_cuda_ipc)
  set(M2N_HAVE_CUDA_TARGET ON)
endif()

configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/m2nConfig.cmake.in
  ${PROJECT_BINARY_DIR}/m2nConfig.cmake INSTALL_DESTINATION ${M2N_INSTALL_CMAKEDIR})
write_basic_package_version_file(${PROJECT_BINARY_DIR}/m2nConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/m2nConfig.cmake ${PROJECT_BINARY_DIR}/m2nConfigVersion.cmake
  DESTINATION ${M2N_INSTALL_CMAKEDIR})

# m2n.pc finds the prefix from its own place (${pcfiledir}), so `cmake --install --prefix` anywhere
# gives a working file.
file(RELATIVE_PATH M2N_PC_TO_PREFIX /prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig /prefix)
configure_file(${PROJECT_SOURCE_DIR}/cmake/m2n.pc.in ${PROJECT_BINARY_DIR}/m2n.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/m2n.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
