/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tpf_kprobe.c - the generic kprobe program, part of tpf_programs.c (appended to its text
 * when the node has kprobes: -DTPF_WITH_KPROBES) and compiled with it, once.
 *
 *   tpf_kprobe     attached to each kernel function a policy names (`spec.kprobes[].call`);
 *                  which one fired is told by its address (bpf_get_func_ip), which the agent
 *                  maps to the function's hook ID in tpf_kfuncs. Argument i is read into
 *                  values[1 + i] (as sys_enter's: values[k] is also strs[k]'s pointer),
 *                  from the registers, or for a syscall (`syscall: true`: the function is
 *                  the arch's wrapper, __x64_sys_*, whose one parameter is the user's
 *                  pt_regs) from the registers the user called the syscall with. String
 *                  arguments are read in the STRINGS stage from kernel memory, or user
 *                  memory for a syscall (tpf_work.kern_strs). A hook may also read one
 *                  kernel string: the char * at offset str_off of the struct its argument
 *                  str_arg points to (linux_binprm: filename; the offset comes from the
 *                  node's BTF, so it is the running kernel's), as strs[0] (what PATH
 *                  selectors compare). Then the tracepoints' stages: candidates,
 *                  policy_filter_check first, selectors, actions - through the
 *                  kprobe-typed stage programs below (a tail call needs a program array of
 *                  the caller's type).
 *
 *   tpf_kretprobe  attached as a return probe to each function a `return: true` entry
 *                  names. The entry's posted events carry TPF_EV_RET_WAIT and mark the call
 *                  (task, hook) in tpf_retwait; at the return this program sends a return record (the
 *                  hook, the task, the return value in values[0]) that the agent joins to
 *                  them (tpfilter.programs.retjoin). The selectors run at the entry, where
 *                  Sigkill and Override can still act, as in Tetragon. The events of a
 *                  selector with matchReturnArgs are held at the entry instead and posted
 *                  here, complete, if the return value matches (tpf_retsel.c).
 *
 *   Override       a kprobe cannot change a return value on a kernel without
 *                  bpf_override_return (Debian: no CONFIG_FUNCTION_ERROR_INJECTION). For a
 *                  security_<hook> function the matching selector records argError and the
 *                  hook for the task (tpf_override) and the BPF LSM program of <hook>
 *                  (tpf_lsm_override.c, loaded for that hook when a policy needs it), which
 *                  the kernel runs inside security_<hook> after the kprobe at its entry,
 *                  returns it: the caller sees the error. The kprobe drops a stale verdict
 *                  of the same task first, so a verdict only ever applies to the call that
 *                  made it, and the LSM program takes only a verdict made for its hook.
 */

#include <linux/ptrace.h> /* struct pt_regs: the kernel's own (its headers) */
#include "tpf_path.h"        /* the path walk of file / path arguments */

#define TPF_STAGE_PATH 3 /* kprobes only: strs[0] is a file's or path's name (below) */
#define TPF_STAGE_NET 4  /* kprobes only: the network arguments' tuples (tpf_net.c) */
#define TPF_STAGE_OBJ 5  /* kprobes only: the kernel-object arguments' fields (tpf_obj.c) */
BPF_PROG_ARRAY(tpf_kstages, 7); /* + TPF_STAGE_BINARY (6, tpf_binary.c) */
BPF_F_TABLE("hash", u64, u32, tpf_kfuncs, 1024, BPF_F_NO_PREALLOC); /* address -> hook */

#define TPF_KH_SYSCALL 1 /* the arch's syscall wrapper: arguments from the user's pt_regs */
#define TPF_KH_RETURN 2  /* return: true: posted events wait for the return record */

#define TPF_READ_MEMBER 0 /* strs[0]: the char * at str_off of the struct (linux_binprm) */
#define TPF_READ_FILE 1   /* strs[0]: the path name of a struct file * */
#define TPF_READ_PATH 2   /* strs[0]: the path name of a struct path * */
#define TPF_READ_FD 3     /* strs[0]: the path name of the file an fd is open on (tpf_fd.h) */
#define TPF_READ_DENTRY 4 /* strs[0]: a struct dentry *'s name up to its file system's root */
#define TPF_READ_KIOCB 5  /* strs[0]: the path name of the struct file * at str_off (kiocb) */

struct tpf_khook {
	u8 str_arg; /* argument holding the struct pointer; 0xff: no string */
	u8 flags;   /* TPF_KH_* */
	u8 kern_strs; /* bit k: strs[k] (argument k - 1) is read from kernel memory */
	u8 reader;  /* TPF_READ_*: what str_arg points to */
	u32 str_off; /* offset of the char * member in that struct */
	u8 buf_size[8]; /* bit-for-bit tpf_work.buf_size: char_buf k's size is values[buf_size[k]] */
	u8 net_arg[TPF_NR_NET];  /* ev.net[k] is read from argument net_arg[k] ... */
	u8 net_kind[TPF_NR_NET]; /* ... as a TPF_NET_* (0: not read) */
	u16 str_add[8]; /* bit-for-bit tpf_work.str_add: strs[k] at values[k] + str_add[k] */
	struct tpf_obj_spec obj[TPF_NR_OBJ]; /* the kernel-object arguments (tpf_obj.c) */
};
BPF_ARRAY(tpf_khooks, struct tpf_khook, TPF_NR_HOOKS);

/* The event's work and its hook's kprobe config, for the reader stages; false (the stage
 * ends the chain) if either is missing. */
static __always_inline bool tpf_khook_of(struct tpf_work **w, struct tpf_khook **kh)
{
	u32 zero = 0, hook;

	*w = tpf_work.lookup(&zero);
	if (!*w)
		return false;
	hook = (*w)->hook;
	*kh = tpf_khooks.lookup(&hook);
	return *kh != 0;
}

int tpf_kstage_filter(struct pt_regs *ctx)
{
	int next = tpf_filter_run();
	u32 zero = 0;
	struct tpf_work *w;

	if (next == TPF_STAGE_STRINGS) { /* a path to walk first: only for a kept entry */
		w = tpf_work.lookup(&zero);
		if (w && w->path_kind)
			next = TPF_STAGE_PATH;
		if (w) { /* objects, network arguments first (then the path): kept entries only */
			u32 hook = w->hook;
			struct tpf_khook *kh = tpf_khooks.lookup(&hook);

#ifdef TPF_WITH_NET
			if (kh && (kh->net_kind[0] || kh->net_kind[1]))
				next = TPF_STAGE_NET;
#endif
			if (kh && (kh->obj[0].nfields || kh->obj[1].nfields))
				next = TPF_STAGE_OBJ;
		}
	}
	if (next >= 0)
		tpf_kstages.call(ctx, next);
	return 0;
}

#ifdef TPF_WITH_PATHS
#ifdef TPF_WITH_FD
#include "tpf_fd.h"
#endif

/*
 * strs[0]: the path name of the kept entries' file / path / fd / dentry argument
 * (tpf_path.h). An fd is first looked up in the task's file table (tpf_fd.h; not open:
 * unreadable). A dentry comes without its mount, so its walk stops at the root of its own
 * file system.
 */
static __always_inline void tpf_path_walk(struct tpf_work *w)
{
	void *path = (void *)w->path_ptr;

#ifdef TPF_WITH_FD
	if (w->path_kind == TPF_READ_FD)
		path = tpf_fd_file(w->path_ptr);
#endif
	if (w->path_kind == TPF_READ_FILE || w->path_kind == TPF_READ_FD)
		path = path ? (char *)path + TPF_OFF_FILE_PATH : 0;
	tpf_path_name(w->pbuf, path, w->path_kind == TPF_READ_DENTRY, &w->sc.path);
	bpf_probe_read_kernel(w->sc.ev.path, TPF_STR_MAX, w->sc.path.fwd.s);
}

int tpf_kstage_path(struct pt_regs *ctx)
{
	u32 zero = 0;
	struct tpf_work *w = tpf_work.lookup(&zero);

	if (!w)
		return 0;
	tpf_path_walk(w);
	tpf_kstages.call(ctx, TPF_STAGE_STRINGS);
	return 0;
}
#endif

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

/* The syscall's arguments from the pt_regs the user entered the kernel with. */
static __always_inline void tpf_syscall_args(u64 *values, struct pt_regs *regs)
{
	bpf_probe_read_kernel(&values[1], sizeof(u64), &PT_REGS_PARM1_SYSCALL(regs));
	bpf_probe_read_kernel(&values[2], sizeof(u64), &PT_REGS_PARM2_SYSCALL(regs));
	bpf_probe_read_kernel(&values[3], sizeof(u64), &PT_REGS_PARM3_SYSCALL(regs));
	bpf_probe_read_kernel(&values[4], sizeof(u64), &PT_REGS_PARM4_SYSCALL(regs));
	bpf_probe_read_kernel(&values[5], sizeof(u64), &PT_REGS_PARM5_SYSCALL(regs));
	bpf_probe_read_kernel(&values[6], sizeof(u64), &PT_REGS_PARM6_SYSCALL(regs));
}

int tpf_kprobe(struct pt_regs *ctx)
{
	u64 ip = bpf_get_func_ip(ctx), id;
	u32 *found = tpf_kfuncs.lookup(&ip), hook, zero = 0;
	struct tpf_khook *kh;
	struct tpf_hook *h;
	struct tpf_work *w;
	u64 *values;

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
	kh = tpf_khooks.lookup(&hook);
	if (!kh)
		return 0;
	if (kh->flags & TPF_KH_RETURN) { /* what an earlier call whose return went unseen left */
		struct tpf_ret_key call = {.id = id, .hook = hook};

		tpf_retwait.delete(&call);
	}
	values = w->sc.ev.values;
	values[0] = 0; /* the return value, in the return record */
	values[7] = 0;
	if (kh->flags & TPF_KH_SYSCALL) {
		tpf_syscall_args(values, (struct pt_regs *)PT_REGS_PARM1(ctx));
	} else {
		values[1] = PT_REGS_PARM1(ctx);
		values[2] = PT_REGS_PARM2(ctx);
		values[3] = PT_REGS_PARM3(ctx);
		values[4] = PT_REGS_PARM4(ctx);
		values[5] = PT_REGS_PARM5(ctx);
		values[6] = PT_REGS_PARM6(ctx);
	}
	w->kern_strs = kh->kern_strs;
	__builtin_memcpy(w->buf_size, kh->buf_size, sizeof(w->buf_size));
	__builtin_memcpy(w->str_add, kh->str_add, sizeof(w->str_add));
	w->ret_wait = kh->flags & TPF_KH_RETURN ? 1 : 0;
	tpf_str_reset(&w->sc.path);
	w->sc.ev.path[0] = 0;
	if (kh->str_arg < 6 && kh->reader == TPF_READ_KIOCB) {
		void *file = 0; /* the kiocb's file (ki_filp), walked as a file */

		bpf_probe_read_kernel(&file, sizeof(file),
				      (void *)(values[(kh->str_arg + 1) & 7] + kh->str_off));
		w->path_kind = TPF_READ_FILE;
		w->path_ptr = (u64)file;
	} else if (kh->str_arg < 6 && kh->reader != TPF_READ_MEMBER) {
		w->path_kind = kh->reader; /* walked after FILTER, for kept entries only */
		w->path_ptr = values[(kh->str_arg + 1) & 7];
	} else if (kh->str_arg < 6) {
		char *p = 0;
		u64 base = values[(kh->str_arg + 1) & 7];

		bpf_probe_read_kernel(&p, sizeof(p), (void *)(base + kh->str_off));
		tpf_str_done(&w->sc.path,
			     bpf_probe_read_kernel_str(w->sc.path.fwd.s, TPF_STR_MAX, p));
		bpf_probe_read_kernel(w->sc.ev.path, TPF_STR_MAX, w->sc.path.fwd.s);
	}
	tpf_kstages.call(ctx, TPF_STAGE_FILTER);
	return 0;
}

/* The return record of a task whose entry event was posted (see the top of this file). */
int tpf_kretprobe(struct pt_regs *ctx)
{
	u64 ip = bpf_get_func_ip(ctx), id = bpf_get_current_pid_tgid();
	u32 *found = tpf_kfuncs.lookup(&ip), *waiting, wait;
	struct tpf_ret_key call = {.id = id};
	struct tpf_event *ev;

	if (!found)
		return 0;
	call.hook = *found;
	waiting = tpf_retwait.lookup(&call);
	if (!waiting)
		return 0;
	wait = *waiting;
	tpf_retwait.delete(&call);
	tpf_ret_release(id, *found, (wait >> TPF_RW_HELD_SHIFT) & 0xff, PT_REGS_RC(ctx));
	if (!(wait & TPF_RW_RECORD))
		return 0; /* no posted event waits for a record */
	ev = tpf_events.ringbuf_reserve(sizeof(*ev));
	if (!ev)
		return 0; /* the agent's joiner gives up waiting for it after a bound */
	__builtin_memset(ev, 0, offsetof(struct tpf_event, comm));
	ev->ktime_ns = bpf_ktime_get_boot_ns();
	ev->cgroup_id = bpf_get_current_cgroup_id();
	ev->pid = id >> 32;
	ev->tid = (u32)id;
	ev->hook = *found;
	ev->sel = 0xff;
	ev->flags = TPF_EV_RETURN;
	ev->values[0] = PT_REGS_RC(ctx);
	ev->comm[0] = 0;
	ev->path[0] = 0;
	ev->str[0] = 0;
	tpf_events.ringbuf_submit(ev, 0);
	return 0;
}
