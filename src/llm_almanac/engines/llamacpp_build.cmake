# Included by llm-almanac's llama.cpp install (CMAKE_PROJECT_INCLUDE, engines/llamacpp.py) after the
# top-level project() call. Two things, neither of which changes a compiler flag:
# - only llama-server: at the end of the top-level CMakeLists every target but llama-server leaves
#   the default build, so that `cmake --build .` compiles llama-server and what it links, not the
#   ~30 other tools;
# - with -DALMANAC_UNITY_BUILD=ON, a unity build (CMake's UNITY_BUILD: each target's sources are
#   compiled up to 8, CMake's default batch, per translation unit, so the headers are parsed once
#   per batch, not once per file). Sources whose name matches ALMANAC_UNITY_SKIP (a regex) are compiled alone:
#   llama.cpp's mtmd-helper files refuse to share a unit with mtmd's internal headers (#error).
#   Targets matching ALMANAC_UNITY_KEEP_TARGETS (the ggml compute libraries) are compiled file by
#   file as usual, so the kernels that do the measured work are built exactly as llama.cpp's own
#   build builds them (docs/engines.md: the speed comparison).
#   The install builds without it if the unity build fails (engines/llamacpp.py).
if(CMAKE_CURRENT_SOURCE_DIR STREQUAL CMAKE_SOURCE_DIR AND NOT ALMANAC_BUILD_INCLUDED)
  set(ALMANAC_BUILD_INCLUDED TRUE)
  if(NOT DEFINED ALMANAC_UNITY_SKIP)
    set(ALMANAC_UNITY_SKIP "mtmd-helper")
  endif()
  if(NOT DEFINED ALMANAC_UNITY_KEEP_TARGETS)
    set(ALMANAC_UNITY_KEEP_TARGETS "^ggml")
  endif()
  if(ALMANAC_UNITY_BUILD)
    set(CMAKE_UNITY_BUILD ON)
  endif()
  function(almanac_visit dir)
    get_property(targets DIRECTORY "${dir}" PROPERTY BUILDSYSTEM_TARGETS)
    foreach(t IN LISTS targets)
      get_target_property(type "${t}" TYPE)
      if(type STREQUAL "INTERFACE_LIBRARY")
        continue()
      endif()
      if(NOT t STREQUAL "llama-server")
        set_property(TARGET "${t}" PROPERTY EXCLUDE_FROM_ALL TRUE)
      endif()
      if(t MATCHES "${ALMANAC_UNITY_KEEP_TARGETS}")
        set_property(TARGET "${t}" PROPERTY UNITY_BUILD OFF)
      elseif(ALMANAC_UNITY_BUILD)
        get_target_property(srcs "${t}" SOURCES)
        foreach(s IN LISTS srcs)
          get_filename_component(base "${s}" NAME)
          if(base MATCHES "${ALMANAC_UNITY_SKIP}")
            if(NOT IS_ABSOLUTE "${s}")
              set(s "${dir}/${s}")
            endif()
            # a relative path would be read against this (the top-level) directory
            set_source_files_properties("${s}" DIRECTORY "${dir}" PROPERTIES SKIP_UNITY_BUILD_INCLUSION ON)
          endif()
        endforeach()
      endif()
    endforeach()
    get_property(subdirs DIRECTORY "${dir}" PROPERTY SUBDIRECTORIES)
    foreach(d IN LISTS subdirs)
      almanac_visit("${d}")
    endforeach()
  endfunction()
  function(almanac_finish)
    almanac_visit("${CMAKE_SOURCE_DIR}")
  endfunction()
  cmake_language(DEFER CALL almanac_finish)
endif()
