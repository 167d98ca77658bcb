/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tpf_programs.c - the generic TracingPolicy programs, compiled ONCE by bcc when the agent
 * starts. Policies never compile anything: the agent (tpfilter.programs) writes what a
 * policy says into the maps below and these programs interpret it.
 *
 *   tpf_exec       sched/sched_process_exec; runs in the new program's context before
 *                  it returns to user space, so bpf_send_signal(SIGKILL) kills it before
 *                  it runs any of its own code. The binary is the exec'd filename.
 *   tpf_sys_enter  attached to each syscalls/sys_enter_* a policy names (attaching an
 *                  already loaded program compiles nothing); the hook is the syscall
 *                  number the tracepoint reports.
 *   tpf_kprobe     (tpf_kprobe.c, appended where the node has kprobes) each kernel function
 *                  a policy names; Override through the function's BPF LSM hook.
 *
 * For every event:
 *
 *   0. the candidates: the hook's unfiltered entries, and the filtered policies the
 *      candidate index (below) lists for the task's container, plus the hostSelector {}
 *      policies when the task may be a host process. Policies that cannot apply to the
 *      task are never looked at, so an event's cost does not grow with them;
 *   1. for each filtered candidate with entries on this hook (tpf_pcfg{hook, policy}):
 *      policy_filter_check(policy ID) - always the first test: is the task in a cgroup
 *      the policy selects (bpf/policy_filter.h)? The index only *chooses* candidates; this
 *      check decides, so a stale index can only cost a lookup or (the agent writes it
 *      first) never drop a match;
 *   2. selectors in order; the first that matches decides (Tetragon: selectors are ORed,
 *      the filters inside one are ANDed, the values of one filter are ORed - NotEqual and
 *      NotIn: ANDed, i.e. "none of");
 *   3. its actions: Post (an event to the ring buffer; the default), NoPost, Sigkill,
 *      Override (kprobes: a verdict for the LSM program, tpf_kprobe.c).
 *
 * Verifier cost: bcc (0.26) supports neither bpf_loop callbacks nor BPF-to-BPF calls, so
 * everything is inlined and every loop is a bounded loop the verifier walks, and
 * policy_filter_check() itself walks up to 63 cgroup levels (~7,000 verified instructions
 * per call site). One program looping over 128 candidates would exceed the verifier's
 * limit, so the work is split into stages chained by tail calls, each handling a batch
 * (per-CPU scratch carries the state; a tail call stays on the CPU, preemption off):
 *
 *   entry (tpf_exec / tpf_sys_enter)  the candidates; none: return (the common case);
 *                                     else read the event once, then -> FILTER
 *   FILTER (tpf_stage_filter)         policy_filter_check() of TPF_FILTER_BATCH
 *                                     candidates, their entries kept in a compact list,
 *                                     -> itself for the next batch, then -> STRINGS
 *   STRINGS (tpf_stage_strings)       the strings the selectors compare, read (and
 *                                     reversed for Postfix) once, -> SELECT
 *   BINARY (tpf_stage_binary)         only for a hook with matchBinaries (tpf_binary.c):
 *                                     the task's executable and, for followChildren, its
 *                                     ancestors', looked up once into task facts, -> SELECT
 *   SELECT (tpf_stage_select)         the selectors and actions of TPF_SELECT_BATCH kept
 *                                     entries, -> itself for the next batch
 *
 * 128 candidates take 8 + 1 (+ 1) + 16 tail calls, under the kernel's limit of 33. The agent fills
 * the stage array before it attaches an entry; a missing stage is a reported load error.
 * The bound that remains is per task, not per hook: TPF_MAX_ANY unfiltered entries per
 * hook, TPF_INDEX_MAX policies selecting one container, TPF_INDEX_MAX hostSelector
 * policies (the agent reports a policy past a bound as an error naming the pods).
 */
#include "policy_filter.h"
#include "tpf_programs.h"
#include "tpf_task.h"

/* Offsets of sched_process_exec's fields, from the running kernel's format file. */
#ifndef TPF_EXEC_FILENAME_OFF
#define TPF_EXEC_FILENAME_OFF 8
#endif
#ifndef TPF_EXEC_PID_OFF
#define TPF_EXEC_PID_OFF 12
#endif
#ifndef TPF_EXEC_OLD_PID_OFF
#define TPF_EXEC_OLD_PID_OFF 16
#endif

#ifndef TPF_MAX_SLOT_ENTRIES
#define TPF_MAX_SLOT_ENTRIES 16384
#endif
#ifndef TPF_MAX_SEL_ENTRIES
#define TPF_MAX_SEL_ENTRIES 16384
#endif
#ifndef TPF_MAX_SET_ENTRIES
#define TPF_MAX_SET_ENTRIES 65536
#endif
#ifndef TPF_MAX_STAT_ENTRIES
#define TPF_MAX_STAT_ENTRIES 16384
#endif
#ifndef TPF_RINGBUF_PAGES
#define TPF_RINGBUF_PAGES 256
#endif

#define TPF_NR_STRS 7 /* strs[0]: the binary; strs[1..6]: user strings at values[1..6] */
#ifndef TPF_FILTER_BATCH
#define TPF_FILTER_BATCH 16
#endif
#ifndef TPF_SELECT_BATCH
#define TPF_SELECT_BATCH 8
#endif
#define TPF_STAGE_FILTER 0
#define TPF_STAGE_SELECT 1
#define TPF_STAGE_STRINGS 2
#define TPF_STAGE_BINARY 6 /* tpf_binary.c: after STRINGS (kprobes use 3, 4 and 5) */
#define TPF_BINM_OWN 1     /* tpf_hook.bin_mask: the task's binary */
#define TPF_BINM_FOLLOW 2  /* ... and its ancestors' (followChildren) */
#define TPF_BINM_POSTFIX 4 /* a Postfix filter: the names are reversed and looked up */
#ifndef TPF_MAX_PCFG_ENTRIES
#define TPF_MAX_PCFG_ENTRIES 65536
#endif
#ifndef TPF_INDEX_PIN
#define TPF_INDEX_PIN TPF_FILTER_PIN "_index"
#endif

/* Per hook: how many entries, and which strings its selectors need. */
struct tpf_hook {
	u32 n;       /* unfiltered entries: tpf_slots{hook, 0..n-1} */
	u8 str_mask; /* bit k: strs[k] is compared by some selector (k = 0: the binary) */
	u8 rev_mask; /* bit k: ... with Postfix, so its reverse is needed */
	u8 capture;  /* bit k: strs[k] is put into events (user strings only) */
	u8 bin_mask; /* TPF_BINM_*: matchBinaries filters need the binary stage (tpf_binary.c) */
	u32 npol;    /* filtered policies with entries in tpf_pcfg{hook, *} */
};

struct tpf_work {
	struct tpf_scratch sc;
	struct tpf_str more[TPF_NR_STRS - 1]; /* strs[1..6]; sc.path is strs[0] */
	struct tpf_slot slots[TPF_MAX_KEPT];  /* the entries FILTER kept, as it saw them */
	u32 cand[TPF_MAX_CANDS];              /* candidate policy IDs (after the nany slots) */
	u32 hook;
	u32 cursor; /* first candidate (FILTER) or kept entry (SELECT) of the next batch */
	u32 nany;   /* unfiltered entries of the hook, as the entry program read it */
	u32 ncand;  /* filtered candidates in cand[] */
	u32 nkept;  /* entries in slots[] */
	u8 pass;    /* policy_filter_check()'s last answer, see tpf_stage_filter */
	u8 kern_strs; /* bit k: strs[k] is a kernel string (kprobes), else a user string */
	u8 ret_wait;  /* a kprobe with return: true: posted events wait for the return */
	u8 path_kind; /* kprobes: strs[0] is the path of the file / path at path_ptr (1 / 2) */
	u8 buf_size[8]; /* kprobes: strs[k] is a char_buf of values[buf_size[k]] bytes; 0xff: a string */
	u16 str_add[8]; /* kprobes: strs[k] is at values[k] + str_add[k] (a net_device's name) */
	u64 path_ptr;
	u32 retwait; /* tpf_retwait's value for this call (TPF_RW_*) */
	char pbuf[3 * TPF_STR_MAX]; /* the path walk builds the name here, from its end */
	struct tpf_task task; /* matchPIDs/matchNamespaces/matchCapabilities facts (tpf_task.h) */
	struct tpf_str bin;   /* tpf_binary.c: an executable's path name, one task at a time */
};

BPF_ARRAY(tpf_hooks, struct tpf_hook, TPF_NR_HOOKS);
BPF_F_TABLE("hash", struct tpf_slot_key, struct tpf_slot, tpf_slots, TPF_MAX_SLOT_ENTRIES,
	    BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", struct tpf_pcfg_key, struct tpf_pcfg, tpf_pcfg, TPF_MAX_PCFG_ENTRIES,
	    BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", struct tpf_sel_key, struct tpf_sel, tpf_sels, TPF_MAX_SEL_ENTRIES,
	    BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", struct tpf_strbuf, u8, tpf_strs, TPF_MAX_SET_ENTRIES, BPF_F_NO_PREALLOC);
BPF_F_TABLE("lpm_trie", struct tpf_lpm_key, u8, tpf_prefix, TPF_MAX_SET_ENTRIES,
	    BPF_F_NO_PREALLOC);
BPF_F_TABLE("lpm_trie", struct tpf_lpm_key, u8, tpf_postfix, TPF_MAX_SET_ENTRIES,
	    BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", struct tpf_int_key, u8, tpf_ints, TPF_MAX_SET_ENTRIES, BPF_F_NO_PREALLOC);
BPF_F_TABLE("percpu_hash", u64, u64, tpf_stats, TPF_MAX_STAT_ENTRIES, BPF_F_NO_PREALLOC);
BPF_PERCPU_ARRAY(tpf_work, struct tpf_work, 1);
BPF_PROG_ARRAY(tpf_stages, 7); /* FILTER, SELECT, STRINGS; 6: BINARY (tpf_binary.c) */
/* A selector's task filters (tpf_task.h), when tpf_sel.task is set; followForks' PIDs. */
BPF_F_TABLE("hash", struct tpf_sel_key, struct tpf_tsel, tpf_tsels, TPF_MAX_SEL_ENTRIES,
	    BPF_F_NO_PREALLOC);
BPF_F_TABLE("hash", struct tpf_follow_key, u64, tpf_follow, TPF_MAX_SET_ENTRIES,
	    BPF_F_NO_PREALLOC);
/* Override verdicts: pid_tgid -> argError, from a kprobe's selector to the BPF LSM program
 * the kernel calls inside the same security_* function (tpf_kprobe.c). */
BPF_F_TABLE("hash", u64, struct tpf_verdict, tpf_override, 16384, BPF_F_NO_PREALLOC);
/* Shared with the per-hook Override programs (tpf_lsm_override.c, modules of their own). */
__attribute__((section("maps/export"))) struct tpf_override_table_t __tpf_override;
/* Calls with kprobe events waiting for their function's return: (task, hook) -> TPF_RW_*
 * (keyed by the hook too: a call of one hooked function may be inside another's). */
BPF_F_TABLE("hash", struct tpf_ret_key, u32, tpf_retwait, 16384, BPF_F_NO_PREALLOC);
BPF_RINGBUF_OUTPUT(tpf_events, TPF_RINGBUF_PAGES);
/* Never written: declared so that bcc hands the agent the event's ctypes layout. */
BPF_ARRAY(tpf_event_layout, struct tpf_event, 1);

/*
 * The candidate index: which filtered policies can apply to a task, found from its cgroup.
 *
 *   tpf_index_maps[0] -> hash {u64 cgroup ID -> struct tpf_cands}   (BPF_F_NO_PREALLOC)
 *
 * Key: a container's cgroup ID, as in the policies' inner maps; value: every policy whose
 * inner map holds it. Key TPF_HOST_MARKER: the policies with hostSelector {}. It is the
 * inner maps turned inside out (tpfilter/candidates.py computes it from the same desired
 * state), written by the same single writer (the agent's engine) in an order that keeps
 * it a superset of them: a policy enters a cgroup's entry before the cgroup enters the
 * policy's inner map, and leaves it after. A one-slot array of maps holds it so that the
 * agent can size it to its content and swap a rebuilt map in whole, like the inner maps
 * (the programs keep the fd of the array). Pinned next to the outer map, created by
 * whichever comes first, the agent or a program; an empty slot means no candidates (fail
 * closed, like a missing inner map).
 */
BPF_F_TABLE("hash", u64, struct tpf_cands, tpf_index_template, 1, BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("array_of_maps$tpf_index_template", u32, int, tpf_index_maps, 1,
		 TPF_INDEX_PIN);

/*
 * Process records (tpf_task.h struct tpf_proc) of matchNamespaceChanges and
 * matchCapabilityChanges: tgid -> record, in the inner map the agent puts in slot 0 only
 * while a loaded policy has one of them (tpfilter/programs/procrecords.py; tpf_procs.c keeps
 * it). An empty slot: no records, no change matches, and no node pays for the map. The
 * agent makes the one-slot array itself and pins it only for bcc to open here (then
 * unpins it): an inner map must match the array's template, and bcc's templates carry BTF
 * that the agent's maps do not (Debian's 6.1 refuses that pair: EINVAL).
 */
#ifndef TPF_PROCS_PIN
#define TPF_PROCS_PIN TPF_FILTER_PIN "_procs"
#endif
BPF_F_TABLE("hash", u32, struct tpf_proc, tpf_procs_template, 1, BPF_F_NO_PREALLOC);
BPF_TABLE_PINNED("array_of_maps$tpf_procs_template", u32, int, tpf_procs_maps, 1,
		 TPF_PROCS_PIN);

static __always_inline void *tpf_procs(void)
{
	u32 zero = 0;

	return tpf_procs_maps.lookup(&zero);
}

/*
 * The first value of `map` found for the task's cgroup, or for an ancestor at the levels
 * the agent put containers at (the same walk as policy_filter_check()'s, which decides).
 */
static __always_inline void *tpf_chain_find(void *map, u64 cgroup_id)
{
	u64 ancestor, mask, *levels;
	u32 zero = 0;
	void *v;
	int level;

	v = bpf_map_lookup_elem(map, &cgroup_id);
	if (v)
		return v;
	levels = policy_filter_levels.lookup(&zero);
	if (!levels)
		return NULL;
	mask = *levels;
	if (mask & TPF_LEVELS_WALK_ALL)
		mask = ~0ULL;
	for (level = 0; level <= TPF_MAX_LEVEL && mask; level++, mask >>= 1) {
		if (!(mask & 1))
			continue;
		ancestor = bpf_get_current_ancestor_cgroup_id(level);
		if (!ancestor || ancestor == cgroup_id)
			break;
		v = bpf_map_lookup_elem(map, &ancestor);
		if (v)
			return v;
	}
	return NULL;
}

/* Unrolled: constant offsets into the entry (a loop's pointer walk loses its bound). */
static __always_inline u32 tpf_append(struct tpf_work *w, u32 n, struct tpf_cands *c)
{
	u32 m = c->n;

#pragma unroll
	for (u32 k = 0; k < TPF_INDEX_MAX; k++) {
		if (k >= m || n >= TPF_MAX_CANDS)
			break;
		w->cand[n & (TPF_MAX_CANDS - 1)] = c->ids[k];
		n++;
	}
	return n;
}

/*
 * The filtered candidates of the current task into w->cand; returns how many.
 *
 * Its container's entry (none: in no selected container), then the hostSelector {}
 * policies if the task may be a host process: its chain meets no pod container (the
 * all-pods set, policy_filter.h), or it is in the node's PID namespace (entered a
 * container's cgroup from the node, or a hostPID pod's: the check tells them apart).
 * Without the all-pods set a hostSelector policy matches no host process (fails closed),
 * so it is then a candidate only where it selects the container.
 */
static __always_inline u32 tpf_gather(struct tpf_work *w)
{
	u64 cgroup_id = bpf_get_current_cgroup_id(), host_key = TPF_HOST_MARKER;
	u32 zero = 0, all_pods = TPF_ALL_PODS_ID, n = 0;
	struct tpf_cands *own, *host;
	struct bpf_pidns_info ns;
	void *index, *pods;
	bool maybe_host;

	index = tpf_index_maps.lookup(&zero);
	if (!index)
		return 0;
	own = tpf_chain_find(index, cgroup_id);
	if (own)
		n = tpf_append(w, n, own);
	host = bpf_map_lookup_elem(index, &host_key);
	if (!host)
		return n;
	if (own) {
		maybe_host = false;
	} else {
		pods = policy_filter_maps.lookup(&all_pods);
		if (!pods)
			return n;
		maybe_host = !tpf_chain_find(pods, cgroup_id);
	}
	if (!maybe_host)
		maybe_host = !bpf_get_ns_current_pid_tgid(TPF_NODE_PIDNS_DEV, TPF_NODE_PIDNS_INO,
							  &ns, sizeof(ns));
	if (maybe_host)
		n = tpf_append(w, n, host);
	return n;
}

static __always_inline void tpf_count(u32 config, u32 what)
{
	u64 key = ((u64)config << 8) | what;
	u64 one = 1;
	u64 *v = tpf_stats.lookup(&key);

	if (v) {
		*v += 1; /* per-CPU value: no other writer */
		return;
	}
	if (tpf_stats.insert(&key, &one) != 0) {
		v = tpf_stats.lookup(&key);
		if (v)
			*v += 1;
	}
}

static __always_inline struct tpf_str *tpf_strs_at(struct tpf_work *w, u32 k)
{
	if (k == 0)
		return &w->sc.path;
	k -= 1;
	if (k >= TPF_NR_STRS - 1)
		return NULL;
	return &w->more[k];
}

/* Zero the string (set keys hash all TPF_STR_MAX bytes) and mark it unread. */
static __always_inline void tpf_str_reset(struct tpf_str *str)
{
	u32 *p = (u32 *)str->fwd.s;

#pragma unroll
	for (int i = 0; i < TPF_STR_MAX / 4; i++)
		p[i] = 0;
	str->len = -1;
	str->too_long = 0;
	str->rev_ready = 0;
}

static __always_inline void tpf_str_done(struct tpf_str *str, long n)
{
	if (n <= 0) {
		str->len = -1;
		return;
	}
	str->len = n - 1;
	/* 255 bytes and the NUL: the source may have been cut; equality cannot be told. */
	str->too_long = n >= TPF_STR_MAX;
}

static __always_inline void tpf_str_reverse(struct tpf_str *str)
{
	u32 len;

	if (str->len <= 0)
		return;
	len = str->len & (TPF_STR_MAX - 1);
	/*
	 * All 255 bytes, no exit on len: rev[i] = fwd[(len - 1 - i) mod 256], and for i >= len
	 * that index is past the string's NUL, where fwd is zero (tpf_str_reset). A loop that
	 * stopped at len left up to 255 different states behind it for each string, which
	 * Debian 6.1's verifier could not prune (E2BIG). The write index is hidden from clang
	 * so that it keeps the mask instead of making the write a pointer increment, whose
	 * bound 6.1's verifier loses.
	 */
#pragma clang loop unroll(disable)
	for (u32 i = 0; i < TPF_STR_MAX - 1; i++) {
		u32 d = i;

		asm volatile("" : "+r"(d));
		str->rev.s[d & (TPF_STR_MAX - 1)] = str->fwd.s[(len - 1 - i) & (TPF_STR_MAX - 1)];
	}
	str->rev.s[TPF_STR_MAX - 1] = 0;
	str->rev_ready = 1;
}

/*
 * A string buffer made into a key of the sets of (config, sel, arg), in place: `word0` is 0
 * for the hash set of exact strings, the prefix length in bits for the LPM tries (whose
 * struct tpf_lpm_key is the same bytes, cut at TPF_LPM_STR_MAX).
 */
static __always_inline void *tpf_set_key(struct tpf_strbuf *buf, u32 word0, u32 config, u8 sel,
					 u8 arg)
{
	buf->word0 = word0;
	buf->config = config;
	buf->sel = sel;
	buf->arg = arg;
	return buf;
}

/* The LPM prefix length of a string's key: (config, sel, arg), then its bytes up to the key's. */
static __always_inline u32 tpf_lpm_bits(struct tpf_str *str)
{
	u32 len = str->len;

	if (len > TPF_LPM_STR_MAX)
		len = TPF_LPM_STR_MAX;
	return 64 + 8 * len;
}

/* Is the string in the set (config, sel, arg)? Unreadable or cut strings are in none. */
static __always_inline bool tpf_str_in(struct tpf_str *str, u32 config, u8 sel, u8 arg)
{
	if (str->len < 0 || str->too_long)
		return false;
	return tpf_strs.lookup(tpf_set_key(&str->fwd, 0, config, sel, arg)) != NULL;
}

static __always_inline bool tpf_str_match(struct tpf_str *str, u8 op, u32 config, u8 sel, u8 arg)
{
	if (!str || str->len < 0)
		return false; /* not readable: no operator matches */
	switch (op) {
	case TPF_OP_EQ:
		return tpf_str_in(str, config, sel, arg);
	case TPF_OP_NE:
		return !tpf_str_in(str, config, sel, arg);
	case TPF_OP_PREFIX:
	case TPF_OP_NOTPREFIX:
		return (tpf_prefix.lookup(tpf_set_key(&str->fwd, tpf_lpm_bits(str), config, sel,
						      arg)) != NULL) == (op == TPF_OP_PREFIX);
	case TPF_OP_POSTFIX:
	case TPF_OP_NOTPOSTFIX:
		if (str->too_long || !str->rev_ready)
			return false; /* the end of a cut string is unknown: neither */
		return (tpf_postfix.lookup(tpf_set_key(&str->rev, tpf_lpm_bits(str), config, sel,
						       arg)) != NULL) == (op == TPF_OP_POSTFIX);
	}
	return false;
}

static __always_inline bool tpf_int_match(u64 raw, struct tpf_arg *a, u32 config, u8 sel, u8 arg)
{
	struct tpf_int_key key = {};
	bool is_signed = false;
	u64 v = raw;

	switch (a->type) {
	case TPF_T_S32:
		v = (u64)(s64)(s32)raw;
		is_signed = true;
		break;
	case TPF_T_U32:
		v = (u32)raw;
		break;
	case TPF_T_S64:
		is_signed = true;
		break;
	case TPF_T_S16:
		v = (u64)(s64)(s16)raw;
		is_signed = true;
		break;
	case TPF_T_U16:
		v = (u16)raw;
		break;
	case TPF_T_S8:
		v = (u64)(s64)(s8)raw;
		is_signed = true;
		break;
	case TPF_T_U8:
		v = (u8)raw;
		break;
	}
	switch (a->op) {
	case TPF_OP_EQ:
	case TPF_OP_NE:
		key.config = config;
		key.sel = sel;
		key.arg = arg;
		key.value = v;
		if (tpf_ints.lookup(&key))
			return a->op == TPF_OP_EQ;
		return a->op == TPF_OP_NE;
	case TPF_OP_GT:
		return is_signed ? (s64)v > (s64)a->imm : v > a->imm;
	case TPF_OP_LT:
		return is_signed ? (s64)v < (s64)a->imm : v < a->imm;
	case TPF_OP_MASK:
		return (v & a->imm) != 0;
	}
	return false;
}

static __always_inline bool tpf_task_sel(struct tpf_work *w, u32 config, u8 s)
{
	struct tpf_sel_key key = {.config = config, .sel = s};
	struct tpf_tsel *ts = tpf_tsels.lookup(&key);

	return ts && tpf_task_match(&w->task, ts); /* none: being rewritten, no decision */
}

#ifdef TPF_WITH_KPROBES /* defined in tpf_retsel.c, appended to this text */
static __always_inline void tpf_ret_hold(struct tpf_work *w, u32 config);
#endif

#ifdef TPF_WITH_NET /* defined in tpf_net.c, appended to this text */
static __always_inline bool tpf_net_match(struct tpf_work *w, struct tpf_arg *a, u32 config,
					  u8 sel, u8 arg);
#endif

static __always_inline bool tpf_sel_match(struct tpf_work *w, u32 config, u8 s, struct tpf_sel *sel)
{
	u8 nargs = sel->nargs;

	if (sel->bin_op != TPF_BIN_NONE) {
		bool in = tpf_str_in(&w->sc.path, config, s, TPF_ARG_BINARY);

		if (sel->bin_op == TPF_BIN_IN ? !in : in)
			return false;
	}
#pragma unroll
	for (int j = 0; j < TPF_MAX_ARGS; j++) {
		struct tpf_arg *a = &sel->args[j];

		if (j >= nargs)
			break;
		if (a->kind == TPF_KIND_INT) {
			if (!tpf_int_match(w->sc.ev.values[a->src & (TPF_NR_VALUES - 1)], a, config, s, j))
				return false;
		} else if (a->kind == TPF_KIND_PATH) {
			if (!tpf_str_match(&w->sc.path, a->op, config, s, j))
				return false;
		} else if (a->kind == TPF_KIND_USER_STR) {
			if (!tpf_str_match(tpf_strs_at(w, a->src), a->op, config, s, j))
				return false;
#ifdef TPF_WITH_NET
		} else if (a->kind == TPF_KIND_NET) {
			if (!tpf_net_match(w, a, config, s, j))
				return false;
#endif
		} else {
			return false;
		}
	}
	/* last: a branch here splits no path of the checks above (verifier cost) */
	return !sel->task || tpf_task_sel(w, config, s);
}

static __always_inline void tpf_act(struct tpf_work *w, struct tpf_slot *slot, u8 sel, u8 actions,
				    s32 error, u8 sig)
{
	struct tpf_event *ev = &w->sc.ev;
	u32 config = slot->config;

	tpf_count(config, TPF_STAT_MATCH);
	ev->flags = 0;
	if (actions & TPF_ACT_OVERRIDE) {
		u64 id = bpf_get_current_pid_tgid();
		struct tpf_verdict v = {.error = error, .hook = w->hook};

		if (tpf_override.update(&id, &v) != 0)
			tpf_count(config, TPF_STAT_ERROR);
	}
	if (actions & TPF_ACT_SIGKILL) {
		if (bpf_send_signal(9) == 0) {
			tpf_count(config, TPF_STAT_SIGKILL);
		} else {
			tpf_count(config, TPF_STAT_ERROR);
			ev->flags |= TPF_EV_KILL_FAILED;
		}
	}
	if (actions & TPF_ACT_SIGNAL) {
		if (bpf_send_signal(sig) == 0) {
			tpf_count(config, TPF_STAT_SIGNAL);
		} else {
			tpf_count(config, TPF_STAT_ERROR);
			ev->flags |= TPF_EV_KILL_FAILED;
		}
	}
	if (!(actions & TPF_ACT_POST))
		return;
	ev->ktime_ns = bpf_ktime_get_boot_ns();
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->config = config;
	ev->policy_id = slot->policy_id;
	ev->hook = w->hook;
	ev->sel = sel;
	ev->actions = actions;
	if (w->sc.path.too_long)
		ev->flags |= TPF_EV_PATH_LONG;
	ev->str[0] = 0;
	if (slot->capture != 0xff) {
		struct tpf_str *c = tpf_strs_at(w, slot->capture);

		if (c && c->len >= 0) {
			bpf_probe_read_kernel(ev->str, TPF_STR_MAX, c->fwd.s);
			ev->flags |= TPF_EV_STR_SET;
		}
	}
	if (w->ret_wait) {
		struct tpf_ret_key call = {.id = bpf_get_current_pid_tgid(), .hook = w->hook};

#ifdef TPF_WITH_KPROBES
		if (actions & TPF_ACT_RET_FILTER) { /* posted at the return, if it matches */
			tpf_ret_hold(w, config);
			return;
		}
#endif
		ev->flags |= TPF_EV_RET_WAIT;
		w->retwait |= TPF_RW_RECORD;
		tpf_retwait.update(&call, &w->retwait);
	}
	if (tpf_events.ringbuf_output(ev, sizeof(*ev), 0) == 0)
		tpf_count(config, TPF_STAT_POST);
	else
		tpf_count(config, TPF_STAT_DROP);
}

/*
 * A kernel string, or a user one. A kprobe's `char *` may be either (BTF does not say
 * __user here): kernel memory is tried first, then user memory; on x86-64 and arm64 the
 * two address ranges do not overlap, so the read that succeeds is the right one.
 */
static __always_inline void tpf_str_read(struct tpf_str *str, void *p, bool kernel)
{
	long n = -1;

	if (kernel)
		n = bpf_probe_read_kernel_str(str->fwd.s, TPF_STR_MAX, p);
	if (n < 0)
		n = bpf_probe_read_user_str(str->fwd.s, TPF_STR_MAX, p);
	tpf_str_done(str, n);
}

/* A char_buf: size bytes at p (at most 255: more is too_long, compared as a prefix). */
static __always_inline void tpf_buf_read(struct tpf_str *str, void *p, u64 size, bool kernel)
{
	u32 n = size > TPF_STR_MAX - 1 ? TPF_STR_MAX - 1 : (u32)size;
	long r = -1;

	if (kernel)
		r = bpf_probe_read_kernel(str->fwd.s, n & (TPF_STR_MAX - 1), p);
	if (r != 0)
		r = bpf_probe_read_user(str->fwd.s, n & (TPF_STR_MAX - 1), p);
	if (r != 0)
		return; /* len stays -1: unreadable */
	str->len = n;
	str->too_long = size > TPF_STR_MAX - 1;
}

/* The strings this hook's selectors compare, read (and reversed) once per event. */
/* The followForks filters whose PIDs hold the task or one of its ancestors (tpf_task.h). */
static __always_inline u64 tpf_follow_bits(struct tpf_task *t)
{
	struct tpf_follow_key key = {};
	u64 bits = 0, *v;

	tpf_task_walk(t);
#pragma unroll
	for (int i = 0; i < TPF_ANC; i++) {
		if (!t->anc[i])
			break;
		key.kind = TPF_FOLLOW_HOST;
		key.pid = t->anc[i];
		v = tpf_follow.lookup(&key);
		if (v)
			bits |= *v;
		if (!t->anc_ns[i])
			continue;
		key.kind = TPF_FOLLOW_NS;
		key.pid = t->anc_ns[i];
		v = tpf_follow.lookup(&key);
		if (v)
			bits |= *v;
	}
	return bits;
}

static __always_inline void tpf_load_strings(struct tpf_work *w, struct tpf_hook *h)
{
	if (h->rev_mask & 1)
		tpf_str_reverse(&w->sc.path);
#pragma unroll
	for (int k = 1; k < TPF_NR_STRS; k++) {
		struct tpf_str *str = &w->more[k - 1];

		if (!((h->str_mask | h->capture) & (1 << k)))
			continue;
		tpf_str_reset(str);
		if (w->buf_size[k] < TPF_NR_VALUES)
			tpf_buf_read(str, (void *)w->sc.ev.values[k],
				     w->sc.ev.values[w->buf_size[k] & (TPF_NR_VALUES - 1)],
				     w->kern_strs & (1 << k));
		else
			tpf_str_read(str, (void *)(w->sc.ev.values[k] + w->str_add[k]),
				     w->kern_strs & (1 << k));
		if (h->rev_mask & (1 << k))
			tpf_str_reverse(str);
	}
}

/* Keep a copy of an entry whose filter passed: SELECT acts on what FILTER tested. */
static __always_inline void tpf_keep(struct tpf_work *w, struct tpf_slot *slot)
{
	u32 m = w->nkept;

	if (m >= TPF_MAX_KEPT) {
		tpf_count(slot->config, TPF_STAT_ERROR); /* not reachable within the agent's bounds */
		return;
	}
	w->slots[m & (TPF_MAX_KEPT - 1)] = *slot;
	w->nkept = m + 1;
}

/*
 * FILTER: candidates [cursor, cursor + TPF_FILTER_BATCH): first the hook's unfiltered
 * entries (nany), then the filtered candidate policies (ncand), each with its entries on
 * this hook (tpf_pcfg) and policy_filter_check() first.
 *
 * The check's answer goes through memory (w->pass): as a register it is a constant 0 or 1
 * on each path, the branch on it makes it precise and the verifier stops merging the
 * paths of this loop. For the same reason the kept entries are counted in memory.
 */
static __always_inline int tpf_filter_run(void)
{
	u32 zero = 0, hook, base, n, nany;
	struct tpf_work *w = tpf_work.lookup(&zero);

	if (!w)
		return -1;
	hook = w->hook;
	base = w->cursor;
	nany = w->nany;
	n = nany + w->ncand;
#pragma clang loop unroll(disable)
	for (u32 k = 0; k < TPF_FILTER_BATCH; k++) {
		struct tpf_slot_key key = {};
		struct tpf_pcfg_key pkey = {};
		struct tpf_pcfg *pc;
		struct tpf_slot *slot;
		u32 i = base + k;

		if (i >= n || i >= TPF_MAX_ANY + TPF_MAX_CANDS)
			break;
		if (i < nany) {
			key.hook = hook;
			key.slot = i;
			slot = tpf_slots.lookup(&key);
			if (slot)
				tpf_keep(w, slot); /* unfiltered: every process */
			continue;
		}
		pkey.hook = hook;
		pkey.policy_id = w->cand[(i - nany) & (TPF_MAX_CANDS - 1)];
		pc = tpf_pcfg.lookup(&pkey);
		if (!pc)
			continue; /* the policy has no entry on this hook */
		w->pass = policy_filter_check(pkey.policy_id);
		if (!*(volatile u8 *)&w->pass)
			continue;
#pragma unroll
		for (u32 j = 0; j < TPF_MAX_PER_HOOK; j++) {
			if (j >= pc->n)
				break;
			tpf_keep(w, &pc->slots[j]);
		}
	}
	base += TPF_FILTER_BATCH;
	if (base < n && base < TPF_MAX_ANY + TPF_MAX_CANDS) {
		w->cursor = base;
		return TPF_STAGE_FILTER;
	}
	if (!w->nkept)
		return -1; /* no policy applies to this task */
	w->cursor = 0;
	w->sc.ev.pid = bpf_get_current_pid_tgid() >> 32;
	w->sc.ev.tid = (u32)bpf_get_current_pid_tgid();
	bpf_get_current_comm(w->sc.ev.comm, sizeof(w->sc.ev.comm));
	return TPF_STAGE_STRINGS;
}

/* STRINGS: the strings the hook's selectors compare, read and reversed once per event, in
 * a program of their own: in SELECT's, the string loops pushed Debian 6.1's verifier past
 * its limit (E2BIG). */
static __always_inline int tpf_strings_run(void)
{
	u32 zero = 0, hook;
	struct tpf_hook *h;
	struct tpf_work *w = tpf_work.lookup(&zero);

	if (!w)
		return -1;
	hook = w->hook;
	h = tpf_hooks.lookup(&hook);
	if (!h)
		return -1;
	tpf_load_strings(w, h);
	if (h->str_mask & TPF_STR_TASK) {
		void *recs = tpf_procs();
		u32 tgid = bpf_get_current_pid_tgid() >> 32;

		tpf_task_load(&w->task);
		tpf_task_changes(&w->task, recs ? bpf_map_lookup_elem(recs, &tgid) : 0);
	}
	if (h->rev_mask & TPF_STR_TASK) /* followForks */
		w->task.facts[TPF_F_FOLLOW] = tpf_follow_bits(&w->task);
	if (h->bin_mask) /* matchBinaries: the executables' names (tpf_binary.c), then SELECT */
		return TPF_STAGE_BINARY;
	return TPF_STAGE_SELECT;
}

int tpf_stage_strings(void *ctx)
{
	int next = tpf_strings_run();

	if (next >= 0)
		tpf_stages.call(ctx, next);
	return 0;
}

/* The stage programs of the tracepoint entries (tpf_kprobe.c has the kprobes' own: a tail
 * call needs a program array of the caller's program type). */
int tpf_stage_filter(void *ctx)
{
	int next = tpf_filter_run();

	if (next >= 0)
		tpf_stages.call(ctx, next);
	return 0;
}

/* SELECT: selectors and actions of the kept slots in [cursor, cursor + TPF_SELECT_BATCH). */
static __always_inline int tpf_select_run(void)
{
	u32 zero = 0, hook, base, n;
	struct tpf_hook *h;
	struct tpf_work *w = tpf_work.lookup(&zero);

	if (!w)
		return -1;
	hook = w->hook;
	h = tpf_hooks.lookup(&hook);
	if (!h)
		return -1;
	base = w->cursor;
	n = w->nkept;
#pragma clang loop unroll(disable)
	for (u32 k = 0; k < TPF_SELECT_BATCH; k++) {
		struct tpf_slot *slot;
		u32 i = base + k, config, nsel;
		s32 matched = -1, error = 0;
		u8 actions = 0, sig = 0;

		if (i >= n || i >= TPF_MAX_KEPT)
			break;
		asm volatile("" : "+r"(i)); /* keeps the mask: clang dropped it after the bound */
		slot = &w->slots[i & (TPF_MAX_KEPT - 1)];
		config = slot->config;
		nsel = slot->nsel;
		if (nsel == 0) {
			tpf_act(w, slot, 0xff, TPF_ACT_POST, 0, 0);
			continue;
		}
#pragma clang loop unroll(disable)
		for (u32 s = 0; s < TPF_MAX_SELECTORS; s++) {
			struct tpf_sel_key key = {};
			struct tpf_sel *sel;

			if (s >= nsel)
				break;
			key.config = config;
			key.sel = s;
			sel = tpf_sels.lookup(&key);
			if (!sel)
				break; /* being rewritten: no decision rather than a wrong one */
			if (tpf_sel_match(w, config, s, sel)) {
				matched = s;
				w->task.renew |= sel->task & TPF_SELT_RENEW;
				actions = sel->actions;
				error = sel->error;
				sig = sel->sig;
				break;
			}
		}
		if (matched >= 0)
			tpf_act(w, slot, matched, actions, error, sig);
	}
	base += TPF_SELECT_BATCH;
	if (base < n && base < TPF_MAX_KEPT) {
		w->cursor = base;
		return TPF_STAGE_SELECT;
	}
	if (w->task.renew) { /* a change was matched: reported once (Tetragon's) */
		void *recs = tpf_procs();
		u32 tgid = bpf_get_current_pid_tgid() >> 32;

		if (recs)
			bpf_map_update_elem(recs, &tgid, &w->task.now, BPF_EXIST);
		w->task.renew = 0;
	}
	return -1;
}

int tpf_stage_select(void *ctx)
{
	int next = tpf_select_run();

	if (next >= 0)
		tpf_stages.call(ctx, next);
	return 0;
}

/*
 * The candidates of this event into w; false if there are none (the common case for a
 * task that no policy selects: a few lookups and helper calls, whatever is loaded).
 */
static __always_inline bool tpf_begin(struct tpf_work *w, u32 hook, struct tpf_hook *h)
{
	u32 nany = h->n;

	if (nany > TPF_MAX_ANY)
		nany = TPF_MAX_ANY;
	w->hook = hook;
	w->cursor = 0;
	w->nkept = 0;
	w->nany = nany;
	w->kern_strs = 0;
	w->ret_wait = 0;
	w->path_kind = 0;
	w->retwait = 0;
	w->task.renew = 0; /* only this event's match renews this process's record */
	__builtin_memset(w->buf_size, 0xff, sizeof(w->buf_size));
	__builtin_memset(w->str_add, 0, sizeof(w->str_add));
	w->ncand = h->npol ? tpf_gather(w) : 0;
	return nany || w->ncand;
}

int tpf_exec(void *ctx)
{
	u32 hook = TPF_HOOK_EXEC, zero = 0;
	struct tpf_hook *h = tpf_hooks.lookup(&hook);
	struct tpf_work *w;
	u32 loc;

	if (!h || (h->n == 0 && h->npol == 0))
		return 0; /* no policy on this hook: the cost of an unused program */
	w = tpf_work.lookup(&zero);
	if (!w)
		return 0;
	if (!tpf_begin(w, hook, h))
		return 0;
	loc = *(u32 *)((char *)ctx + TPF_EXEC_FILENAME_OFF);
	tpf_str_reset(&w->sc.path);
	tpf_str_done(&w->sc.path, bpf_probe_read_kernel_str(w->sc.path.fwd.s, TPF_STR_MAX,
							     (char *)ctx + (loc & 0xffff)));
	bpf_probe_read_kernel(w->sc.ev.path, TPF_STR_MAX, w->sc.path.fwd.s);
#pragma unroll
	for (int k = 0; k < TPF_NR_VALUES; k++)
		w->sc.ev.values[k] = 0;
	w->sc.ev.values[0] = (u64)(s64) * (s32 *)((char *)ctx + TPF_EXEC_PID_OFF);
	w->sc.ev.values[1] = (u64)(s64) * (s32 *)((char *)ctx + TPF_EXEC_OLD_PID_OFF);
	tpf_stages.call(ctx, TPF_STAGE_FILTER);
	return 0;
}

/*
 * syscalls/sys_enter_*: ctx is {regs pointer, int nr, unsigned long args[6]}. Only nr is
 * read directly: the kernel refuses to attach a program whose direct ctx reads go past
 * the smallest record (a 0-argument syscall), so the arguments are copied with a helper.
 */
struct tpf_sys_enter_ctx {
	u64 regs;
	s32 nr;
};

int tpf_sys_enter(struct tpf_sys_enter_ctx *ctx)
{
	u32 hook = (u32)ctx->nr, zero = 0;
	struct tpf_hook *h;
	struct tpf_work *w;

	if (hook >= TPF_HOOK_EXEC)
		return 0;
	h = tpf_hooks.lookup(&hook);
	if (!h || (h->n == 0 && h->npol == 0))
		return 0;
	w = tpf_work.lookup(&zero);
	if (!w)
		return 0;
	if (!tpf_begin(w, hook, h))
		return 0;
	w->sc.path.len = -1; /* no strs[0] here (matchBinaries: tpf_binary.c reads the binary) */
	w->sc.path.too_long = 0;
	w->sc.path.rev_ready = 0;
	w->sc.ev.path[0] = 0;
	w->sc.ev.values[0] = (u64)(s64)ctx->nr;
	w->sc.ev.values[7] = 0;
	bpf_probe_read_kernel(&w->sc.ev.values[1], 6 * sizeof(u64), (char *)ctx + 16);
	tpf_stages.call(ctx, TPF_STAGE_FILTER);
	return 0;
}

/* tpf_kprobe.c follows here when the node has kprobes: the loader appends it to this text
 * (bcc makes programs only of the functions of its main text, not of included files). */
