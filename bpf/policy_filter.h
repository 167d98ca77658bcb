/* SPDX-License-Identifier: Apache-2.0 */
/*
 * policy_filter.h - "does this TracingPolicy apply to the current process?" for BPF
 * programs compiled with bcc (0.26).
 *
 * tpfilter's agent keeps one pinned BPF hash-of-maps per node:
 *
 *     outer: u32 policy ID -> inner map      (BPF_F_NO_PREALLOC)
 *     inner: u64 cgroup ID -> u8 1           (BPF_F_NO_PREALLOC, sized to its content)
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
 *             -DTPF_MAX_POLICIES=16384
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
 * true if policy `policy_id` applies to the current task.
 *
 * - 0 is the ID of a policy without a podSelector: it applies to every process, and has
 *   no map (an empty or absent map would otherwise mean "no process"), so no lookup.
 * - An ID absent from the outer map selects no pod on this node, or the agent has not
 *   written it yet: false. A filter fails closed; it never widens a policy to every
 *   process because a map is missing.
 * - Otherwise the answer is whether the task's cgroup v2 ID is in the policy's inner map.
 *   bpf_get_current_cgroup_id() is the ID of the task's cgroup in the unified hierarchy,
 *   the inode number of the container's cgroup directory that the agent stored. It is a
 *   helper, not a read of kernel structs, so it is right whatever kernel headers bcc
 *   compiled against.
 *
 * Both lookups are RCU-protected hash lookups: the inner map pointer stays valid for the
 * rest of the program even if the agent swaps the slot meanwhile (resize), and the
 * answer comes from the old or the new map, both complete.
 */
static __always_inline bool policy_filter_check(u32 policy_id)
{
	void *inner;
	u64 cgroup_id;

	if (policy_id == 0)
		return true;
	inner = policy_filter_maps.lookup(&policy_id);
	if (!inner)
		return false;
	cgroup_id = bpf_get_current_cgroup_id();
	return bpf_map_lookup_elem(inner, &cgroup_id) != NULL;
}

#endif /* TPF_POLICY_FILTER_H */
