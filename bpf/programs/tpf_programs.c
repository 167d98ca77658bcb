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
 *
 * For every event, for each slot (one hook entry of one policy) of the hook:
 *
 *   1. policy_filter_check(policy ID) - always the first test: is the task in a cgroup
 *      the policy selects (bpf/policy_filter.h)?
 *   2. selectors in order; the first that matches decides (Tetragon: selectors are ORed,
 *      the filters inside one are ANDed, the values of one filter are ORed - NotEqual and
 *      NotIn: ANDed, i.e. "none of");
 *   3. its actions: Post (an event to the ring buffer; the default), NoPost, Sigkill.
 *
 * Verifier cost: bcc (0.26) supports neither bpf_loop callbacks nor BPF-to-BPF calls, so
 * everything is inlined and every loop is a bounded loop the verifier walks, and
 * policy_filter_check() itself walks up to 63 cgroup levels (~7,000 verified instructions
 * per call site). One program looping over 128 slots would exceed the verifier's limit,
 * so the work is split into stages chained by tail calls, each handling a batch of slots
 * (per-CPU scratch carries the state; a tail call stays on the CPU, preemption off):
 *
 *   entry (tpf_exec / tpf_sys_enter)  read the event once, then -> FILTER
 *   FILTER (tpf_stage_filter)         policy_filter_check() of TPF_FILTER_BATCH slots,
 *                                     -> itself for the next batch, then -> SELECT
 *   SELECT (tpf_stage_select)         strings read once (first batch), then the selectors
 *                                     and actions of TPF_SELECT_BATCH kept slots,
 *                                     -> itself for the next batch
 *
 * 128 slots take 8 + 16 tail calls, under the kernel's limit of 33. The agent fills the
 * stage array before it attaches an entry; a missing stage is a reported load error.
 */
#include "policy_filter.h"
#include "tpf_programs.h"

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
#define TPF_SLOT_WORDS ((TPF_MAX_SLOTS + 63) / 64)

/* Per hook: how many slots, and which strings its selectors need. */
struct tpf_hook {
	u32 n;
	u8 str_mask; /* bit k: strs[k] is compared by some selector (k = 0: the binary) */
	u8 rev_mask; /* bit k: ... with Postfix, so its reverse is needed */
	u8 capture;  /* bit k: strs[k] is put into events (user strings only) */
	u8 pad;
};

struct tpf_work {
	struct tpf_scratch sc;
	struct tpf_str more[TPF_NR_STRS - 1]; /* strs[1..6]; sc.path is strs[0] */
	u64 keep[TPF_SLOT_WORDS];           /* FILTER's result, one bit per slot */
	struct tpf_slot slots[TPF_MAX_SLOTS]; /* the slots FILTER tested, as it saw them */
	u32 hook;
	u32 cursor; /* first slot of the next batch */
	u8 pass;    /* policy_filter_check()'s last answer, see tpf_stage_filter */
	u8 pad[7];
};

BPF_ARRAY(tpf_hooks, struct tpf_hook, TPF_NR_HOOKS);
BPF_F_TABLE("hash", struct tpf_slot_key, struct tpf_slot, tpf_slots, TPF_MAX_SLOT_ENTRIES,
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
BPF_PROG_ARRAY(tpf_stages, 2);
BPF_RINGBUF_OUTPUT(tpf_events, TPF_RINGBUF_PAGES);
/* Never written: declared so that bcc hands the agent the event's ctypes layout. */
BPF_ARRAY(tpf_event_layout, struct tpf_event, 1);

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
#pragma clang loop unroll(disable)
	for (u32 i = 0; i < TPF_STR_MAX - 1; i++) {
		if (i >= len)
			break;
		str->rev.s[i & (TPF_STR_MAX - 1)] = str->fwd.s[(len - 1 - i) & (TPF_STR_MAX - 1)];
	}
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
		return tpf_prefix.lookup(tpf_set_key(&str->fwd, tpf_lpm_bits(str), config, sel,
						     arg)) != NULL;
	case TPF_OP_POSTFIX:
		if (str->too_long || !str->rev_ready)
			return false; /* the end of a cut string is unknown */
		return tpf_postfix.lookup(tpf_set_key(&str->rev, tpf_lpm_bits(str), config, sel,
						      arg)) != NULL;
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
		} else {
			return false;
		}
	}
	return true;
}


static __always_inline void tpf_act(struct tpf_work *w, struct tpf_slot *slot, u8 sel, u8 actions)
{
	struct tpf_event *ev = &w->sc.ev;
	u32 config = slot->config;

	tpf_count(config, TPF_STAT_MATCH);
	ev->flags = 0;
	if (actions & TPF_ACT_SIGKILL) {
		if (bpf_send_signal(9) == 0) {
			tpf_count(config, TPF_STAT_SIGKILL);
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
	if (tpf_events.ringbuf_output(ev, sizeof(*ev), 0) == 0)
		tpf_count(config, TPF_STAT_POST);
	else
		tpf_count(config, TPF_STAT_DROP);
}

/* The strings this hook's selectors compare, read (and reversed) once per event. */
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
		tpf_str_done(str, bpf_probe_read_user_str(str->fwd.s, TPF_STR_MAX,
							  (void *)w->sc.ev.values[k]));
		if (h->rev_mask & (1 << k))
			tpf_str_reverse(str);
	}
}

static __always_inline bool tpf_kept(struct tpf_work *w, u32 i)
{
	return w->keep[(i / 64) & (TPF_SLOT_WORDS - 1)] & (1ULL << (i % 64));
}

/*
 * FILTER: policy_filter_check() for slots [cursor, cursor + TPF_FILTER_BATCH).
 *
 * Its answer goes through memory (w->pass): as a register it is a constant 0 or 1 on
 * each path, the branch on it makes it precise and the verifier stops merging the paths
 * of this loop. For the same reason nothing counts the kept slots in a register.
 */
int tpf_stage_filter(void *ctx)
{
	u32 zero = 0, hook, base, n;
	struct tpf_hook *h;
	struct tpf_work *w = tpf_work.lookup(&zero);
	u64 any = 0;

	if (!w)
		return 0;
	hook = w->hook;
	h = tpf_hooks.lookup(&hook);
	if (!h)
		return 0;
	base = w->cursor;
	n = h->n;
#pragma clang loop unroll(disable)
	for (u32 k = 0; k < TPF_FILTER_BATCH; k++) {
		struct tpf_slot_key key = {};
		struct tpf_slot *slot;
		u32 i = base + k;

		if (i >= n || i >= TPF_MAX_SLOTS)
			break;
		key.hook = hook;
		key.slot = i;
		slot = tpf_slots.lookup(&key);
		if (!slot)
			continue;
		w->pass = policy_filter_check(slot->policy_id);
		if (!*(volatile u8 *)&w->pass)
			continue;
		/* A copy: SELECT must act on the slot this stage tested, even if it changes. */
		w->slots[i & (TPF_MAX_SLOTS - 1)] = *slot;
		w->keep[(i / 64) & (TPF_SLOT_WORDS - 1)] |= 1ULL << (i % 64);
	}
	base += TPF_FILTER_BATCH;
	if (base < n && base < TPF_MAX_SLOTS) {
		w->cursor = base;
		tpf_stages.call(ctx, TPF_STAGE_FILTER);
		return 0; /* not reached unless the tail call failed */
	}
#pragma unroll
	for (int k = 0; k < TPF_SLOT_WORDS; k++)
		any |= w->keep[k];
	if (!any)
		return 0; /* the common case: no policy applies to this task */
	w->cursor = 0;
	w->sc.ev.pid = bpf_get_current_pid_tgid() >> 32;
	w->sc.ev.tid = (u32)bpf_get_current_pid_tgid();
	bpf_get_current_comm(w->sc.ev.comm, sizeof(w->sc.ev.comm));
	tpf_stages.call(ctx, TPF_STAGE_SELECT);
	return 0;
}

/* SELECT: selectors and actions of the kept slots in [cursor, cursor + TPF_SELECT_BATCH). */
int tpf_stage_select(void *ctx)
{
	u32 zero = 0, hook, base, n;
	struct tpf_hook *h;
	struct tpf_work *w = tpf_work.lookup(&zero);

	if (!w)
		return 0;
	hook = w->hook;
	h = tpf_hooks.lookup(&hook);
	if (!h)
		return 0;
	base = w->cursor;
	n = h->n;
	if (base == 0)
		tpf_load_strings(w, h);
#pragma clang loop unroll(disable)
	for (u32 k = 0; k < TPF_SELECT_BATCH; k++) {
		struct tpf_slot *slot;
		u32 i = base + k, config, nsel;
		s32 matched = -1;
		u8 actions = 0;

		if (i >= n || i >= TPF_MAX_SLOTS)
			break;
		if (!tpf_kept(w, i))
			continue;
		slot = &w->slots[i & (TPF_MAX_SLOTS - 1)];
		config = slot->config;
		nsel = slot->nsel;
		if (nsel == 0) {
			tpf_act(w, slot, 0xff, TPF_ACT_POST);
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
				actions = sel->actions;
				break;
			}
		}
		if (matched >= 0)
			tpf_act(w, slot, matched, actions);
	}
	base += TPF_SELECT_BATCH;
	if (base < n && base < TPF_MAX_SLOTS) {
		w->cursor = base;
		tpf_stages.call(ctx, TPF_STAGE_SELECT);
	}
	return 0;
}

static __always_inline void tpf_begin(struct tpf_work *w, u32 hook)
{
#pragma unroll
	for (int k = 0; k < TPF_SLOT_WORDS; k++)
		w->keep[k] = 0;
	w->hook = hook;
	w->cursor = 0;
}

int tpf_exec(void *ctx)
{
	u32 hook = TPF_HOOK_EXEC, zero = 0;
	struct tpf_hook *h = tpf_hooks.lookup(&hook);
	struct tpf_work *w;
	u32 loc;

	if (!h || h->n == 0)
		return 0; /* no policy on this hook: the cost of an unused program */
	w = tpf_work.lookup(&zero);
	if (!w)
		return 0;
	tpf_begin(w, hook);
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
	if (!h || h->n == 0)
		return 0;
	w = tpf_work.lookup(&zero);
	if (!w)
		return 0;
	tpf_begin(w, hook);
	w->sc.path.len = -1; /* no binary on this hook (matchBinaries is refused here) */
	w->sc.path.too_long = 0;
	w->sc.path.rev_ready = 0;
	w->sc.ev.path[0] = 0;
	w->sc.ev.values[0] = (u64)(s64)ctx->nr;
	w->sc.ev.values[7] = 0;
	bpf_probe_read_kernel(&w->sc.ev.values[1], 6 * sizeof(u64), (char *)ctx + 16);
	tpf_stages.call(ctx, TPF_STAGE_FILTER);
	return 0;
}
