/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tpf_kprobe.c - the generic kprobe program, part of tpf_programs.c (appended to its text
 * when the node has kprobes: -DTPF_WITH_KPROBES) and compiled with it, once.
 *
 *   tpf_kprobe     attached to each kernel function a policy names (`spec.kprobes[].call`);
 *                  which one fired is told by its address (bpf_get_func_ip), which the agent
 *                  maps to the function's hook ID in tpf_kfuncs. The arguments are read
 *                  from the registers into values[0..5]; a hook may read one kernel string:
 *                  the char * at offset str_off of the struct its argument str_arg points
 *                  to (linux_binprm: filename; the offset comes from the node's BTF, so it
 *                  is the running kernel's). The string is strs[0] (what PATH selectors
 *                  compare). Then the tracepoints' stages: candidates, policy_filter_check
 *                  first, selectors, actions - through the kprobe-typed stage programs
 *                  below (a tail call needs a program array of the caller's type).
 *
 *   Override       a kprobe cannot change a return value on a kernel without
 *                  bpf_override_return (Debian: no CONFIG_FUNCTION_ERROR_INJECTION). For a
 *                  security_<hook> function the matching selector records argError for the
 *                  task (tpf_override) and the BPF LSM program of <hook>, which the kernel
 *                  runs inside security_<hook> after the kprobe at its entry, returns it:
 *                  the caller sees the error. The kprobe drops a stale verdict of the same
 *                  task first, so a verdict only ever applies to the call that made it.
 */

#include <linux/ptrace.h> /* struct pt_regs: the kernel's own (its headers) */

BPF_PROG_ARRAY(tpf_kstages, 3);
BPF_F_TABLE("hash", u64, u32, tpf_kfuncs, 1024, BPF_F_NO_PREALLOC); /* address -> hook */

struct tpf_khook {
	u8 str_arg; /* argument holding the struct pointer; 0xff: no string */
	u8 pad[3];
	u32 str_off; /* offset of the char * member in that struct */
};
BPF_ARRAY(tpf_khooks, struct tpf_khook, TPF_NR_HOOKS);

int tpf_kstage_filter(struct pt_regs *ctx)
{
	int next = tpf_filter_run();

	if (next >= 0)
		tpf_kstages.call(ctx, next);
	return 0;
}

int tpf_kstage_strings(struct pt_regs *ctx)
{
	int next = tpf_strings_run();

	if (next >= 0)
		tpf_kstages.call(ctx, next);
	return 0;
}

int tpf_kstage_select(struct pt_regs *ctx)
{
	int next = tpf_select_run();

	if (next >= 0)
		tpf_kstages.call(ctx, next);
	return 0;
}

int tpf_kprobe(struct pt_regs *ctx)
{
	u64 ip = bpf_get_func_ip(ctx), id;
	u32 *found = tpf_kfuncs.lookup(&ip), hook, zero = 0;
	struct tpf_khook *kh;
	struct tpf_hook *h;
	struct tpf_work *w;

	if (!found)
		return 0;
	hook = *found;
	h = tpf_hooks.lookup(&hook);
	if (!h || (h->n == 0 && h->npol == 0))
		return 0;
	id = bpf_get_current_pid_tgid();
	tpf_override.delete(&id);
	w = tpf_work.lookup(&zero);
	if (!w)
		return 0;
	if (!tpf_begin(w, hook, h))
		return 0;
	w->sc.ev.values[0] = PT_REGS_PARM1(ctx);
	w->sc.ev.values[1] = PT_REGS_PARM2(ctx);
	w->sc.ev.values[2] = PT_REGS_PARM3(ctx);
	w->sc.ev.values[3] = PT_REGS_PARM4(ctx);
	w->sc.ev.values[4] = PT_REGS_PARM5(ctx);
	w->sc.ev.values[5] = PT_REGS_PARM6(ctx);
	w->sc.ev.values[6] = 0;
	w->sc.ev.values[7] = 0;
	tpf_str_reset(&w->sc.path);
	w->sc.ev.path[0] = 0;
	kh = tpf_khooks.lookup(&hook);
	if (kh && kh->str_arg < 6) {
		char *p = 0;
		u64 base = w->sc.ev.values[kh->str_arg & 7];

		bpf_probe_read_kernel(&p, sizeof(p), (void *)(base + kh->str_off));
		tpf_str_done(&w->sc.path,
			     bpf_probe_read_kernel_str(w->sc.path.fwd.s, TPF_STR_MAX, p));
		bpf_probe_read_kernel(w->sc.ev.path, TPF_STR_MAX, w->sc.path.fwd.s);
	}
	tpf_kstages.call(ctx, TPF_STAGE_FILTER);
	return 0;
}

#ifdef TPF_WITH_LSM
/* Override appliers: one per LSM hook in tpfilter.programs.kprobes.OVERRIDE_LSM_HOOKS. */
struct linux_binprm;

static __always_inline int tpf_override_verdict(void)
{
	u64 id = bpf_get_current_pid_tgid();
	s32 *err = tpf_override.lookup(&id), e;

	if (!err)
		return 0;
	e = *err;
	tpf_override.delete(&id);
	return e;
}

LSM_PROBE(bprm_creds_for_exec, struct linux_binprm *bprm)
{
	return tpf_override_verdict();
}
#endif
