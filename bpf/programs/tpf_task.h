/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tpf_task.h - the task-based selector filters (matchPIDs, matchNamespaces,
 * matchCapabilities), shared by every hook type: tpf_programs.c includes it and calls
 * tpf_task_load() in the STRINGS stage and tpf_task_match() from the selector code, so the
 * tracepoint and kprobe (and lsmhook) stages run the same code.
 *
 * Why the facts are read once, in STRINGS: a selector stage loops over kept entries and
 * selectors (not unrolled); reading ~40 kernel words there would be verified on every
 * path of those loops. STRINGS runs once per event, and only for a hook whose entries
 * have task filters (tpf_hook.str_mask & TPF_STR_TASK).
 *
 * followForks compares every ancestor of the task; SELECT, whose verifier cost these
 * filters already double, has no budget for that loop (bcc 0.26: no bpf_loop), so the
 * ancestors are looked up in STRINGS (tpf_follow, below) into one fact, a bit per filter.
 *
 * Everything is read from the current task with bpf_probe_read_kernel at offsets from the
 * node's BTF (-D TPF_TOFF_*: tpfilter/programs/tasksel.py): bcc 0.26 has no CO-RE, and
 * the agent compiles against no kernel headers. Without them (no BTF) TPF_WITH_TASK is
 * not defined, the facts stay zero, and the compiler refuses every task filter.
 *
 * Pure: helper calls only, no map calls (bcc rewrites map calls in the main file only).
 */
#ifndef TPF_TASK_H
#define TPF_TASK_H

#ifndef TPF_MAX_TFILTERS /* task filters per selector (matchPIDs + matchNamespaces + ...) */
#define TPF_MAX_TFILTERS 8
#endif
#define TPF_TVALUES 4 /* values per filter: Tetragon's limit (MAX_SELECTOR_VALUES) */
#define TPF_NR_NS 10
#define TPF_ANC 8 /* followForks: the task and 7 ancestors (Tetragon: ~10 in its cache) */

/* bit 7 of tpf_hook.str_mask (strs[] use 0..6): the task facts; of rev_mask: followForks */
#define TPF_STR_TASK 0x80

/* Namespace indexes (Tetragon's order). */
#define TPF_NS_UTS 0
#define TPF_NS_IPC 1
#define TPF_NS_MNT 2
#define TPF_NS_PID 3
#define TPF_NS_PID_FOR_CHILDREN 4
#define TPF_NS_NET 5
#define TPF_NS_TIME 6
#define TPF_NS_TIME_FOR_CHILDREN 7
#define TPF_NS_CGROUP 8
#define TPF_NS_USER 9

/*
 * The facts, one u64 each, so that every filter is the same branch-free computation (the
 * filters run inside SELECT's loops: a branch per value would multiply the paths the
 * verifier walks). A fact that cannot be read is TPF_NO_FACT, which no value equals.
 */
#define TPF_F_NS 0      /* + TPF_NS_*: inode numbers (0: unreadable / not built in) */
#define TPF_F_PID 10    /* the process's PID (tgid) in the node's PID namespace */
#define TPF_F_NSPID 11  /* its PID in its own PID namespace */
#define TPF_F_CAPS 12   /* + TPF_CAPS_*: capability sets */
#define TPF_F_FOLLOW 15 /* followForks: bit k, the task or an ancestor is in filter k's set */
#define TPF_F_BIN 16    /* matchBinaries: bit k, the task's binary is in filter k's set */
#define TPF_F_BIN_FOLLOW 17 /* followChildren: ... the task's or an ancestor's (tpf_binary.c) */
#define TPF_F_NS_CHANGED 18   /* bit i: namespace i differs from the process record */
#define TPF_F_CAPS_CHANGED 19 /* + TPF_CAPS_*: the set's bits that differ from the record */
#define TPF_NR_FACTS 32 /* a power of two: the index is masked */
#define TPF_NO_FACT (~0ULL)

/* tpf_tfilter.flags */
#define TPF_TFF_NOTIN 1 /* NotIn: none of the values (else In: any of them) */
#define TPF_TFF_MASK 2  /* capabilities: any bit of vals[0] set (else: equal to a value) */

#define TPF_CAPS_EFFECTIVE 0
#define TPF_CAPS_INHERITABLE 1
#define TPF_CAPS_PERMITTED 2

/* A filter compares the fact `first` (TPF_F_*) with its values. */
struct tpf_tfilter {
	u8 first;
	u8 flags; /* TPF_TFF_* */
	u8 pad[6];
	u64 vals[TPF_TVALUES]; /* unused ones repeat vals[0] (the agent fills them) */
};

/* tpf_tsels{config, sel}: a selector's task filters, ANDed. tpf_sel.task: */
#define TPF_SELT_FILTERS 1 /* it has task filters */
#define TPF_SELT_RENEW 2   /* ... on changes: a match renews the process record */
struct tpf_tsel {
	u32 n;
	u32 pad;
	struct tpf_tfilter f[TPF_MAX_TFILTERS];
};

/*
 * A process record (matchNamespaceChanges, matchCapabilityChanges): what a process had when
 * it was created, or when the agent started keeping records (tpf_procs_maps; the agent's
 * tpfilter/programs/procrecords.py). 0: a namespace not read (never compared).
 */
struct tpf_proc {
	u32 ns[TPF_NR_NS];
	u32 pad[2];
	u64 caps[3]; /* TPF_CAPS_* */
};

/* What the filters compare, read once per event from the current task. */
struct tpf_task {
	u64 facts[TPF_NR_FACTS];
	u32 anc[TPF_ANC];    /* followForks: tgid of the task (0), its parent, ...; 0: none */
	u32 anc_ns[TPF_ANC]; /* their PIDs in the task's PID namespace; 0: not seen from it */
	u32 level;           /* of the task's PID namespace */
	u32 renew;           /* a selector matched on a change: the record becomes `now` */
	u64 pidns;           /* the task's active struct pid_namespace */
	struct tpf_proc now; /* the task as a record would have it */
};

/*
 * followForks (tpf_follow{kind, pid} -> bits, written by the agent: bit k is the
 * followForks filter with ID k, whose set holds that PID): the task and its ancestors are
 * looked up once per event, in STRINGS, and the OR of their bits is the fact
 * TPF_F_FOLLOW, which a filter tests for its own bit like a capability.
 */
#define TPF_FOLLOW_HOST 1 /* PIDs in the node's PID namespace */
#define TPF_FOLLOW_NS 2   /* isNamespacePID: PIDs in the task's own PID namespace */
struct tpf_follow_key {
	u32 kind;
	u32 pid;
};

#ifdef TPF_WITH_TASK
static __always_inline u64 tpf_rd_ptr(u64 base, u32 off)
{
	u64 v = 0;

	if (base)
		bpf_probe_read_kernel(&v, sizeof(v), (void *)(base + off));
	return v;
}

static __always_inline u32 tpf_rd_u32(u64 base, u32 off)
{
	u32 v = 0;

	if (base)
		bpf_probe_read_kernel(&v, sizeof(v), (void *)(base + off));
	return v;
}

/* The inode number of the namespace at *(nsproxy + field): its ns_common at ns_off. */
static __always_inline u32 tpf_ns_inum(u64 nsproxy, u32 field, u32 ns_off)
{
	u64 ns = tpf_rd_ptr(nsproxy, field);

	return ns ? tpf_rd_u32(ns, ns_off + TPF_TOFF_NS_INUM) : 0;
}

/* A struct pid's entry at `level`: its number there and its namespace. */
static __always_inline u64 tpf_upid(u64 pid, u32 level)
{
	return pid + TPF_TOFF_PID_NUMBERS + (u64)(level & 31) * TPF_TSIZE_UPID;
}

/*
 * The namespaces and capability sets of `task` into f[TPF_F_NS + *] and f[TPF_F_CAPS + *]
 * (the current task's for the filters, a new process's for its record); its struct pid
 * and the level and namespace of its active PID namespace out.
 */
static __always_inline void tpf_task_ids(u64 *f, u64 task, u64 *pid_out, u32 *level_out,
					 u64 *pidns_out)
{
	u64 nsproxy = tpf_rd_ptr(task, TPF_TOFF_TASK_NSPROXY);
	u64 cred = tpf_rd_ptr(task, TPF_TOFF_TASK_CRED);
	u64 pid, pidns;
	u32 level;

	f[TPF_F_NS + TPF_NS_UTS] = tpf_ns_inum(nsproxy, TPF_TOFF_NSPROXY_UTS, TPF_TOFF_UTS_NS);
	f[TPF_F_NS + TPF_NS_IPC] = tpf_ns_inum(nsproxy, TPF_TOFF_NSPROXY_IPC, TPF_TOFF_IPC_NS);
	f[TPF_F_NS + TPF_NS_MNT] = tpf_ns_inum(nsproxy, TPF_TOFF_NSPROXY_MNT, TPF_TOFF_MNT_NS);
	f[TPF_F_NS + TPF_NS_PID_FOR_CHILDREN] =
		tpf_ns_inum(nsproxy, TPF_TOFF_NSPROXY_PIDC, TPF_TOFF_PIDNS_NS);
	f[TPF_F_NS + TPF_NS_NET] = tpf_ns_inum(nsproxy, TPF_TOFF_NSPROXY_NET, TPF_TOFF_NET_NS);
#ifdef TPF_TOFF_NSPROXY_TIME
	f[TPF_F_NS + TPF_NS_TIME] = tpf_ns_inum(nsproxy, TPF_TOFF_NSPROXY_TIME, TPF_TOFF_TIME_NS);
	f[TPF_F_NS + TPF_NS_TIME_FOR_CHILDREN] =
		tpf_ns_inum(nsproxy, TPF_TOFF_NSPROXY_TIMEC, TPF_TOFF_TIME_NS);
#else
	f[TPF_F_NS + TPF_NS_TIME] = 0;
	f[TPF_F_NS + TPF_NS_TIME_FOR_CHILDREN] = 0;
#endif
#ifdef TPF_TOFF_NSPROXY_CGROUP
	f[TPF_F_NS + TPF_NS_CGROUP] =
		tpf_ns_inum(nsproxy, TPF_TOFF_NSPROXY_CGROUP, TPF_TOFF_CGROUP_NS);
#else
	f[TPF_F_NS + TPF_NS_CGROUP] = 0;
#endif
	f[TPF_F_NS + TPF_NS_USER] = tpf_ns_inum(cred, TPF_TOFF_CRED_USER_NS, TPF_TOFF_USER_NS);
	/* kernel_cap_t: a u64 since 6.3, two u32 before; the same bits either way */
	f[TPF_F_CAPS + TPF_CAPS_EFFECTIVE] = tpf_rd_ptr(cred, TPF_TOFF_CRED_CAP_EFFECTIVE);
	f[TPF_F_CAPS + TPF_CAPS_INHERITABLE] = tpf_rd_ptr(cred, TPF_TOFF_CRED_CAP_INHERITABLE);
	f[TPF_F_CAPS + TPF_CAPS_PERMITTED] = tpf_rd_ptr(cred, TPF_TOFF_CRED_CAP_PERMITTED);

	/* The active PID namespace (task_active_pid_ns): the one at the deepest level of the
	 * task's struct pid. The process's number there is its leader's. */
	pid = tpf_rd_ptr(tpf_rd_ptr(task, TPF_TOFF_TASK_GROUP_LEADER), TPF_TOFF_TASK_THREAD_PID);
	level = tpf_rd_u32(pid, TPF_TOFF_PID_LEVEL);
	pidns = pid ? tpf_rd_ptr(tpf_upid(pid, level), TPF_TOFF_UPID_NS) : 0;
	f[TPF_F_NS + TPF_NS_PID] =
		pidns ? tpf_rd_u32(pidns, TPF_TOFF_PIDNS_NS + TPF_TOFF_NS_INUM) : 0;
	*pid_out = pid;
	*level_out = level;
	*pidns_out = pidns;
}

/* A record of what tpf_task_ids read. */
static __always_inline void tpf_proc_of(struct tpf_proc *p, u64 *f)
{
#pragma unroll
	for (int i = 0; i < TPF_NR_NS; i++)
		p->ns[i] = f[TPF_F_NS + i];
#pragma unroll
	for (int k = 0; k < 3; k++)
		p->caps[k] = f[TPF_F_CAPS + k];
}

static __always_inline void tpf_task_load(struct tpf_task *t)
{
	u64 *f = t->facts;
	u64 pid, pidns;
	u32 level;

	tpf_task_ids(f, bpf_get_current_task(), &pid, &level, &pidns);
	tpf_proc_of(&t->now, f);
	t->renew = 0;
	f[TPF_F_PID] = bpf_get_current_pid_tgid() >> 32;
	f[TPF_F_NSPID] = pid ? tpf_rd_u32(tpf_upid(pid, level), TPF_TOFF_UPID_NR) : TPF_NO_FACT;
	f[TPF_F_FOLLOW] = 0;
	t->level = level;
	t->pidns = pidns;
	t->anc[0] = f[TPF_F_PID];
	t->anc_ns[0] = pid ? (u32)f[TPF_F_NSPID] : 0;
}

/*
 * The change facts: bit i of TPF_F_NS_CHANGED, namespace i differs from the record (both
 * read); TPF_F_CAPS_CHANGED + k, the bits of set k that do. No record: no change, so that
 * neither In nor NotIn matches (Tetragon rejects a process it has no record of).
 */
static __always_inline void tpf_task_changes(struct tpf_task *t, struct tpf_proc *rec)
{
	u64 *f = t->facts, ns = 0;

	if (!rec) {
		f[TPF_F_NS_CHANGED] = 0;
#pragma unroll
		for (int k = 0; k < 3; k++)
			f[TPF_F_CAPS_CHANGED + k] = 0;
		return;
	}
#pragma unroll
	for (int i = 0; i < TPF_NR_NS; i++) {
		u32 was = rec->ns[i], is = t->now.ns[i];

		ns |= (u64)(was && is && was != is) << i;
	}
	f[TPF_F_NS_CHANGED] = ns;
#pragma unroll
	for (int k = 0; k < 3; k++)
		f[TPF_F_CAPS_CHANGED + k] = rec->caps[k] ^ t->now.caps[k];
}

/*
 * The process that started the task's process (its leader's real_parent): the one step
 * of every ancestor walk (followForks here, followChildren in tpf_binary.c), so that both
 * see the same ancestors. Past init it is the idle task, whose tgid is 0.
 */
static __always_inline u64 tpf_task_parent(u64 task)
{
	return tpf_rd_ptr(tpf_rd_ptr(task, TPF_TOFF_TASK_GROUP_LEADER), TPF_TOFF_TASK_REAL_PARENT);
}

/*
 * followForks: the parents by real_parent (after tpf_task_load). In the task's own PID
 * namespace an ancestor is seen if its struct pid has an entry at the task's level in
 * that same namespace; the first that has not (the runtime that started the container,
 * the runc of a `kubectl exec`) ends the namespace part of the walk.
 */
static __always_inline void tpf_task_walk(struct tpf_task *t)
{
	u64 cur = bpf_get_current_task(), pidns = t->pidns;
	u32 level = t->level;
	bool seen = t->anc_ns[0] != 0;

#pragma unroll
	for (int i = 1; i < TPF_ANC; i++) {
		u64 parent = tpf_task_parent(cur);
		u64 ppid = tpf_rd_ptr(tpf_rd_ptr(parent, TPF_TOFF_TASK_GROUP_LEADER),
				      TPF_TOFF_TASK_THREAD_PID);
		u32 tgid = tpf_rd_u32(parent, TPF_TOFF_TASK_TGID);

		t->anc[i] = tgid; /* 0: the idle task, past init: the walk ends */
		seen = seen && tgid && ppid && tpf_rd_u32(ppid, TPF_TOFF_PID_LEVEL) >= level &&
		       tpf_rd_ptr(tpf_upid(ppid, level), TPF_TOFF_UPID_NS) == pidns;
		t->anc_ns[i] = seen ? tpf_rd_u32(tpf_upid(ppid, level), TPF_TOFF_UPID_NR) : 0;
		cur = parent;
	}
}
#else
static __always_inline void tpf_task_load(struct tpf_task *t)
{
	/* No BTF offsets: the compiler refuses task filters on this node. */
}

static __always_inline void tpf_task_changes(struct tpf_task *t, struct tpf_proc *rec)
{
}

static __always_inline void tpf_task_walk(struct tpf_task *t)
{
}
#endif /* TPF_WITH_TASK */

/* 1 if x != 0, else 0, without a branch (the barrier keeps clang from making one). */
static __always_inline u64 tpf_nz(u64 x)
{
	u64 neg = -x;

	asm volatile("" : "+r"(neg));
	return (x | neg) >> 63;
}

/*
 * One filter, branch-free, 1 if it passes: the fact `first` equal to one of the values
 * (TPF_TFF_MASK: with a bit of vals[0] set); NotIn: none of them. (isNamespaceCapability
 * is a filter of its own: User NotIn the node's user namespace.)
 */
static __always_inline u64 tpf_tfilter_match(struct tpf_task *t, struct tpf_tfilter *f)
{
	u64 v = t->facts[f->first & (TPF_NR_FACTS - 1)], flags = f->flags, eq = 0;

#pragma unroll
	for (int k = 0; k < TPF_TVALUES; k++)
		eq |= 1 ^ tpf_nz(v ^ f->vals[k]);
	eq = (eq & (1 ^ ((flags >> 1) & 1))) | (tpf_nz(v & f->vals[0]) & ((flags >> 1) & 1));
	return eq ^ (flags & TPF_TFF_NOTIN);
}

/*
 * A selector's task filters, ANDed: unrolled and branch-free (filters past n pass), so
 * that SELECT, which runs it inside its loops over kept entries and selectors, gets one
 * straight run of instructions per selector and no new paths for the verifier to walk.
 */
static __always_inline bool tpf_task_match(struct tpf_task *t, struct tpf_tsel *ts)
{
	u64 n = ts->n, all = 1;

	asm volatile("" : "+r"(n)); /* keeps i < n an arithmetic shift, not a branch */
#pragma unroll
	for (u64 i = 0; i < TPF_MAX_TFILTERS; i++) {
		u64 in_range = (i - n) >> 63; /* i < n */

		all &= tpf_tfilter_match(t, &ts->f[i]) | (1 ^ in_range);
	}
	return all;
}

#endif /* TPF_TASK_H */
