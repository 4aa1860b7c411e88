// The whole public surface of m2n: including this header includes every public header.
#pragma once

#include "m2n/deadline.h"
#include "m2n/ep.h"
#include "m2n/group.h"
#include "m2n/launch.h"
#include "m2n/memory.h"
#include "m2n/options.h"
#include "m2n/status.h"
#include "m2n/topology.h"
#include "m2n/version.h"
