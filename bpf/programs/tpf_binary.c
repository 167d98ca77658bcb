/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tpf_binary.c - matchBinaries on every hook type: part of tpf_programs.c (appended to its
 * text, after tpf_kprobe.c where the node has kprobes, when the loader has the struct
 * offsets it needs: -DTPF_WITH_BINARY) and compiled with it, once.
 *
 * What "the binary" is: on sched/sched_process_exec the exec'd filename (bprm->filename,
 * as given to execve: strs[0], read by tpf_exec); on every other hook the path of the
 * task's executable, current->mm->exe_file, walked to a name by tpf_path.h. Nothing is
 * kept per process from its exec (tpfilter's programs keep no process records): the name
 * is read when an event needs it, so exe_file is the *resolved* file (a symlink's target,
 * no relative path), unlike Tetragon's, which keeps the execve filename in its process
 * cache.
 *
 * How a selector compares it: each matchBinaries filter loaded on the node has an ID
 * (tpfilter/programs/binsel.py, at most 64, shared by filters with the same operator kind
 * and values), and the agent writes three sets keyed by the string alone: tpf_bin_eq
 * (In/NotIn values), tpf_bin_prefix (Prefix/NotPrefix, an LPM trie) and tpf_bin_postfix
 * (Postfix/NotPostfix, an LPM trie of reversed strings); a value's entry holds the bits of
 * every filter that the string matches through it (for a trie: through it or through a
 * shorter value of the same filter kind, since only the longest match is returned). This
 * stage, once per event and only after the policy filter check (a hook whose entries have
 * matchBinaries, for tasks some policy selects), looks the binary up in the three into
 * the task fact TPF_F_BIN, and for followChildren also the binaries of the task's
 * ancestors (tpf_task_parent, TPF_ANC processes in all, as followForks) into
 * TPF_F_BIN_FOLLOW. A selector then tests its filter's bit like any task filter
 * (tpf_task.h: branch-free, no cost in SELECT); Not... operators are the negated bit.
 */

#ifndef TPF_MAX_BIN_ENTRIES
#define TPF_MAX_BIN_ENTRIES 16384
#endif

#include "tpf_path.h"

BPF_F_TABLE("hash", struct tpf_strbuf, u64, tpf_bin_eq, TPF_MAX_BIN_ENTRIES, BPF_F_NO_PREALLOC);
BPF_F_TABLE("lpm_trie", struct tpf_lpm_key, u64, tpf_bin_prefix, TPF_MAX_BIN_ENTRIES,
	    BPF_F_NO_PREALLOC);
BPF_F_TABLE("lpm_trie", struct tpf_lpm_key, u64, tpf_bin_postfix, TPF_MAX_BIN_ENTRIES,
	    BPF_F_NO_PREALLOC);

/*
 * The filters whose values match the name: the string's key header is (0, 0, 0), the sets
 * have no per-selector part. An unreadable name matches none; a cut one (255 bytes read)
 * only Prefix (its first 248 bytes): neither its whole nor its end is known.
 */
static __always_inline u64 tpf_bin_bits(struct tpf_str *s, u8 mask)
{
	u64 bits = 0, *v;

	if (s->len < 0)
		return 0;
	v = tpf_bin_prefix.lookup(tpf_set_key(&s->fwd, tpf_lpm_bits(s), 0, 0, 0));
	if (v)
		bits |= *v;
	if (s->too_long)
		return bits;
	v = tpf_bin_eq.lookup(tpf_set_key(&s->fwd, 0, 0, 0, 0));
	if (v)
		bits |= *v;
	if (!(mask & TPF_BINM_POSTFIX))
		return bits; /* no Postfix filter on the hook: spare the reversal (255 steps) */
	tpf_str_reverse(s);
	v = tpf_bin_postfix.lookup(tpf_set_key(&s->rev, tpf_lpm_bits(s), 0, 0, 0));
	if (v)
		bits |= *v;
	return bits;
}

/* The path name of a task's executable into w->bin; unreadable for a kernel thread. */
static __always_inline void tpf_exe_name(struct tpf_work *w, u64 task)
{
	u64 exe = tpf_rd_ptr(tpf_rd_ptr(task, TPF_OFF_TASK_MM), TPF_OFF_MM_EXE_FILE);

	if (!exe) {
		tpf_str_reset(&w->bin);
		return;
	}
	tpf_path_name(w->pbuf, (char *)exe + TPF_OFF_FILE_PATH, false, &w->bin);
}

static __always_inline int tpf_binary_run(void)
{
	u32 zero = 0, hook;
	struct tpf_work *w = tpf_work.lookup(&zero);
	struct tpf_hook *h;
	u64 task, own, all;

	if (!w)
		return -1;
	hook = w->hook;
	h = tpf_hooks.lookup(&hook);
	if (!h)
		return -1;
	task = bpf_get_current_task();
	if (hook == TPF_HOOK_EXEC) {
		own = tpf_bin_bits(&w->sc.path, h->bin_mask); /* the exec'd filename */
	} else {
		tpf_exe_name(w, task);
		own = tpf_bin_bits(&w->bin, h->bin_mask);
	}
	all = own;
	if (h->bin_mask & TPF_BINM_FOLLOW) {
		/* Not unrolled: the path walk is long; the verifier walks each turn once. */
#pragma clang loop unroll(disable)
		for (int i = 1; i < TPF_ANC; i++) {
			task = tpf_task_parent(task);
			if (!tpf_rd_u32(task, TPF_TOFF_TASK_TGID))
				break; /* the idle task, past init: no more ancestors */
			tpf_exe_name(w, task);
			all |= tpf_bin_bits(&w->bin, h->bin_mask);
		}
	}
	w->task.facts[TPF_F_BIN] = own;
	w->task.facts[TPF_F_BIN_FOLLOW] = all;
	return TPF_STAGE_SELECT;
}

int tpf_stage_binary(void *ctx)
{
	int next = tpf_binary_run();

	if (next >= 0)
		tpf_stages.call(ctx, next);
	return 0;
}

#ifdef TPF_WITH_KPROBES
int tpf_kstage_binary(struct pt_regs *ctx)
{
	int next = tpf_binary_run();

	if (next >= 0)
		tpf_kstages.call(ctx, next);
	return 0;
}
#endif
