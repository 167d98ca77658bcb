/* SPDX-License-Identifier: Apache-2.0 */
/*
 * A minimal Sigkill policy for tests: a task that execs while policy TPF_TEST_KILL_POLICY
 * applies to it (policy_filter_check) is killed, as a TracingPolicy's Sigkill action
 * would do. Compiled with tpfilter.bpfsrc.cflags(pin_dir) and a unique pin dir, so only
 * the test's own cgroups can be selected.
 */
#include "policy_filter.h"

#ifndef TPF_TEST_KILL_POLICY
#define TPF_TEST_KILL_POLICY 1
#endif

RAW_TRACEPOINT_PROBE(sched_process_exec)
{
	if (policy_filter_check(TPF_TEST_KILL_POLICY))
		bpf_send_signal(9);
	return 0;
}
