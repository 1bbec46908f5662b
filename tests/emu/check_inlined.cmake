# Fails when the emulated kernel library defines a function of namespace fakequant outside
# fakequant::cuda: such a definition is a device-branch copy of an inline function of the
# shared math header (include/fakequant/quant_math.h), which must have been inlined.
execute_process(COMMAND ${NM} -C --defined-only ${LIBRARY} OUTPUT_VARIABLE symbols RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${NM} failed on ${LIBRARY}")
endif()
string(REGEX MATCHALL "[^\n]* [TtWw] [^\n]*fakequant::[^\n]*" defined "${symbols}")
set(offenders "")
foreach(line IN LISTS defined)
  string(REGEX REPLACE "^[0-9a-f]* [TtWw] " "" name "${line}")
  # Skip names that are in fakequant::cuda, or only mention fakequant types in their arguments.
  if(name MATCHES "^fakequant::cuda::" OR name MATCHES "^(void|[^(]* )fakequant::cuda::" OR NOT name MATCHES "^([^(<]* )?fakequant::")
    continue()
  endif()
  list(APPEND offenders "${name}")
endforeach()
if(offenders)
  list(JOIN offenders "\n  " text)
  message(FATAL_ERROR "device-branch copies of shared inline functions were not inlined:\n  ${text}")
endif()
message(STATUS "no out-of-line copy of the shared math in ${LIBRARY}")
