/* SPDX-License-Identifier: Apache-2.0 */
/*
 * policy_filter.h - "does this TracingPolicy apply to the current process?" for BPF
 * programs compiled with bcc (0.26).
 *
 * tpfilter's agent keeps one pinned BPF hash-of-maps per node:
 *
 *     outer: u32 policy ID -> inner map      (BPF_F_NO_PREALLOC)
 *     inner: u64 cgroup ID -> u8 1           (BPF_F_NO_PREALLOC, sized to its content)
 *     levels: [0] -> u64 bitmask             (cgroup depths to walk, see below)
 *     outer[0xFFFFFFFF]: every pod container's cgroup on the node (for hostSelector {},
 *                        whose policies carry the key 2**64-1 in their inner map)
 *     outer[0xFFFFFFFE]: the containers of hostPID pods (their own processes share the
 *                        node's PID namespace with the runtime's)
 *
 * and a program that enforces or traces for a policy calls policy_filter_check(id) first.
 *
 * Usage: bcc rewrites map calls (`m.lookup(&k)` -> bpf_map_lookup_elem(<map fd>, &k)) only
 * in the main source file, never in #included files, and refuses them inside macros. So
 * this header is *inlined* into the program's source by tpfilter.bpfsrc instead of being
 * included by the preprocessor (with #line directives, so errors still point here):
 *
 *     src = tpfilter.bpfsrc.bcc_source(Path("prog.c"), pin_dir=pin_dir)
 *     BPF(text=src.text, cflags=src.cflags)
 *
 *     prog.c: #include "policy_filter.h"          (replaced by this file's text)
 *             ... if (!policy_filter_check(MY_POLICY_ID)) return 0;
 *     cflags: -I<repo>/bpf -DTPF_FILTER_PIN="/sys/fs/bpf/tpfilter/policy_filter_maps"
 *             -DTPF_MAX_POLICIES=16384 -DTPF_NODE_PIDNS_DEV=4ULL -DTPF_NODE_PIDNS_INO=...ULL
 *
 * A real #include compiles but the verifier then rejects the program ("unknown opcode
 * 8d": a call through the table struct's function pointer); the check below turns that
 * into a compile error that says what to do.
 *
 * The outer map is declared pinned: bcc opens the map already pinned at TPF_FILTER_PIN
 * (by its ID) instead of creating one, so the program sees exactly the maps the agent
 * writes, across agent restarts and program reloads. If nothing is pinned there yet, bcc
 * creates a map of the same shape (the declaration below matches what
 * tpfilter.bpfmaps.PinnedFilterMaps creates) and pins it, and the agent adopts it later:
 * either start order works.
 */
#ifndef TPF_POLICY_FILTER_H
#define TPF_POLICY_FILTER_H

#if __INCLUDE_LEVEL__ > 0
#error "policy_filter.h must be inlined into the main source, not #included: bcc rewrites map calls only in the main file. Compile with tpfilter.bpfsrc.bcc_source()."
#endif

#ifndef TPF_FILTER_PIN
#error "define TPF_FILTER_PIN as the quoted bpffs path of the outer map (see tpfilter.bpfsrc.cflags)"
#endif

/* Only used if this program ends up creating the outer map (see above). */
#ifndef TPF_MAX_POLICIES
#define TPF_MAX_POLICIES 16384
#endif

/*
 * bcc needs a declared inner map to describe a map-of-maps' values; it is the template
 * (key u64, value u8, no prealloc) that every inner map must match, flags included: the
 * kernel rejects a preallocated inner map in this outer map. One entry is enough, hash
 * inner maps of any max_entries are accepted. It costs ~900 bytes per loaded program.
 */
BPF_F_TABLE("hash", u64, u8, tpf_inner_template, 1, BPF_F_NO_PREALLOC);

/* bcc's "type$inner:pin" section syntax: hash-of-maps, inner template, pinned path. */
BPF_TABLE_PINNED("hash_of_maps$tpf_inner_template", u32, int, policy_filter_maps,
                 TPF_MAX_POLICIES, TPF_FILTER_PIN, BPF_F_NO_PREALLOC);

/*
 * Child cgroups. A process in a selected container may create a cgroup below the
 * container's (where it can write its cgroup directory) and move into it; its cgroup ID
 * is then in no inner map. So the container's processes are those whose cgroup *or an
 * ancestor of it* is in the map. bpf_get_current_ancestor_cgroup_id(level) gives the
 * current cgroup's ancestor at an absolute depth (0 = root), and the agent keeps in this
 * pinned one-element array a bitmask of the depths at which cgroups in any inner map are
 * (tpfilter/descendants.py): bit L = "look at the ancestor at level L", bit 63 = "a
 * depth is unknown, look at every level". Kubepods containers sit at 3 to 5 levels, so
 * a miss costs one or two helper calls; there is no per-cgroup state to go stale or to
 * fill up, and it works for cgroups made before the agent started.
 *
 * The array is pinned next to the outer map (TPF_FILTER_PIN "_levels"), created by
 * whichever comes first, the agent or a program (same shape either way), like the outer
 * map. The agent sets a level's bit before it puts a cgroup of that level in a map.
 */
#define TPF_LEVELS_WALK_ALL (1ULL << 63)
#define TPF_MAX_LEVEL 62

#ifndef TPF_LEVELS_PIN
#define TPF_LEVELS_PIN TPF_FILTER_PIN "_levels"
#endif

BPF_TABLE_PINNED("array", u32, u64, policy_filter_levels, 1, TPF_LEVELS_PIN);

/*
 * hostSelector {}. A policy that also matches host processes (those in no pod's container)
 * has the key TPF_HOST_MARKER in its own inner map (no cgroup has that ID), and the agent
 * keeps the cgroups of every pod container on the node in the inner map at the reserved
 * policy ID TPF_ALL_PODS_ID (present while some policy needs it). A task matches such a
 * policy if its cgroup chain reaches no cgroup of the all-pods set, or if it only entered
 * a pod container's cgroup from the node (below).
 */
#define TPF_ALL_PODS_ID 0xFFFFFFFFU
#define TPF_HOST_MARKER 0xFFFFFFFFFFFFFFFFULL

/*
 * Processes that only enter a container's cgroup. The container runtime (runc init joins
 * the cgroup before it execs the container's command; `runc exec` does the same), a host
 * tool run with `nsenter --cgroup`, anything root writes into cgroup.procs: these are the
 * node's processes, in a container's cgroup without being the container's. The PID
 * namespace tells them apart: a container's own processes live in the pod's PID namespace
 * (the runtime makes it, and `kubectl exec` joins it), the node's stay in the node's, until
 * they fork into the container's. Pods with hostPID: true are the exception: their own
 * processes are in the node's namespace too, so the agent keeps their containers' cgroups
 * at the reserved ID TPF_HOST_PID_PODS_ID (absent: no such pod on the node).
 *
 * So a task in the node's PID namespace (TPF_NODE_PIDNS_DEV/INO: the agent's own, which
 * runs with hostPID) is a container's own process only if the container is a hostPID
 * pod's; otherwise it is a host process that sits in the container's cgroup: the policies
 * that select the container do not apply to it, and hostSelector {} does. A task in any
 * other PID namespace is the container's. Not told apart: a process of another container's
 * PID namespace that moves into this container's cgroup, and a host process in a hostPID
 * pod's container. bpf_get_ns_current_pid_tgid() is the helper made for this question: it
 * compares the task's active PID namespace with (dev, inode) and fails if they differ.
 */
#ifndef TPF_NODE_PIDNS_INO
#error "define TPF_NODE_PIDNS_DEV and TPF_NODE_PIDNS_INO: the node's PID namespace (see tpfilter.bpfsrc.cflags)"
#endif
#define TPF_HOST_PID_PODS_ID 0xFFFFFFFEU

/* true if the current task is one of `container`'s own processes (it is in its chain). */
static __always_inline bool tpf_container_own_task(u64 container)
{
	struct bpf_pidns_info ns;
	u32 host_pid_pods_id = TPF_HOST_PID_PODS_ID;
	void *host_pid_pods;

	if (bpf_get_ns_current_pid_tgid(TPF_NODE_PIDNS_DEV, TPF_NODE_PIDNS_INO, &ns, sizeof(ns)))
		return true;
	host_pid_pods = policy_filter_maps.lookup(&host_pid_pods_id);
	return host_pid_pods && bpf_map_lookup_elem(host_pid_pods, &container);
}

/*
 * true if the policy whose map is `inner` has hostSelector {} and the all-pods set is
 * there. Without the set (not written yet) a hostSelector policy fails closed: only its
 * selected containers match.
 */
static __always_inline bool tpf_matches_host(void *inner)
{
	u64 marker = TPF_HOST_MARKER;
	u32 all_pods = TPF_ALL_PODS_ID;

	return bpf_map_lookup_elem(inner, &marker) && policy_filter_maps.lookup(&all_pods);
}

/*
 * The answer for a task whose own cgroup is not in `inner` (a policy's inner map): find
 * the pod container in its cgroup chain, walking the ancestors at the levels the agent
 * named from the root down. The walk stops at the first level deeper than the task's own
 * cgroup (the helper returns 0, or the task's own ID at its own level, already looked up).
 *
 * `pods` is the all-pods set for a policy with hostSelector {}, else `inner` itself (its
 * lookups then repeat ones that missed or are never reached). A container of the chain in
 * `inner` is selected; one only in `pods` is a pod container the policy does not select
 * (containers do not nest: a chain holds one at most). The task gets the container's answer
 * if it is one of the container's own processes, else (entered from the node, or no pod
 * container in the chain) a host process's: true for a hostSelector policy only.
 * `pods` is always a valid map of the same kind as `inner`, and the "is it a hostSelector
 * policy" answer is only looked up again at the end, so the verifier walks the loop once,
 * not once per kind of policy. Measured with tests/kernel/bpf/check_exec.c (5 call
 * sites): 31,731 verified instructions (28,510 before the PID namespace test; a first
 * hostSelector version that branched on "pods or not" inside the loop took 47,286).
 */
static __always_inline bool tpf_current_cgroup_in(void *inner, void *pods, u64 cgroup_id)
{
	u64 ancestor, container = 0, mask, *levels;
	bool selected = false;
	u32 zero = 0;
	int level;

	if (bpf_map_lookup_elem(pods, &cgroup_id)) {
		container = cgroup_id;
		goto found;
	}
	levels = policy_filter_levels.lookup(&zero);
	if (!levels)
		return false;
	mask = *levels;
	if (mask & TPF_LEVELS_WALK_ALL)
		mask = ~0ULL;
	for (level = 0; level <= TPF_MAX_LEVEL && mask; level++, mask >>= 1) {
		if (!(mask & 1))
			continue;
		ancestor = bpf_get_current_ancestor_cgroup_id(level);
		if (!ancestor || ancestor == cgroup_id)
			break;
		if (bpf_map_lookup_elem(inner, &ancestor)) {
			container = ancestor;
			selected = true;
			break;
		}
		if (bpf_map_lookup_elem(pods, &ancestor)) {
			container = ancestor;
			break;
		}
	}
found:
	if (container && tpf_container_own_task(container))
		return selected;
	return tpf_matches_host(inner);
}

/*
 * true if policy `policy_id` applies to the current task.
 *
 * - 0 is the ID of a policy without a podSelector: it applies to every process, and has
 *   no map (an empty or absent map would otherwise mean "no process"), so no lookup.
 * - An ID absent from the outer map selects no pod on this node, or the agent has not
 *   written it yet: false. A filter fails closed; it never widens a policy to every
 *   process because a map is missing.
 * - Otherwise the answer is whether the task's cgroup v2 ID, or that of an ancestor (a
 *   child cgroup the container made), is in the policy's inner map (see above), and the
 *   task is the container's own process, not the node's (see above).
 *   bpf_get_current_cgroup_id() is the ID of the task's cgroup in the unified hierarchy,
 *   the inode number of the container's cgroup directory that the agent stored. Both are
 *   helpers, not reads of kernel structs, so they are right whatever kernel headers bcc
 *   compiled against.
 * - A policy with hostSelector {} (TPF_HOST_MARKER in its map) also matches a task whose
 *   cgroup chain meets no pod container, or that entered a pod container from the node.
 *   A match in the task's own cgroup costs one helper call more (the PID namespace); a
 *   miss costs one lookup (the marker), and a hostSelector policy's walk one more lookup
 *   per level tried.
 *
 * The lookups are RCU-protected: the inner map pointer stays valid for the rest of the
 * program even if the agent swaps the slot meanwhile (resize), and the answer comes from
 * the old or the new map, both complete.
 */
static __always_inline bool policy_filter_check(u32 policy_id)
{
	u64 cgroup_id, marker = TPF_HOST_MARKER;
	u32 all_pods = TPF_ALL_PODS_ID;
	void *inner, *pods = NULL;

	if (policy_id == 0)
		return true;
	inner = policy_filter_maps.lookup(&policy_id);
	if (!inner)
		return false;
	cgroup_id = bpf_get_current_cgroup_id();
	if (bpf_map_lookup_elem(inner, &cgroup_id))
		return tpf_container_own_task(cgroup_id) || tpf_matches_host(inner);
	if (bpf_map_lookup_elem(inner, &marker))
		pods = policy_filter_maps.lookup(&all_pods);
	if (!pods)
		pods = inner;
	return tpf_current_cgroup_in(inner, pods, cgroup_id);
}

#endif /* TPF_POLICY_FILTER_H */
