/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tpf_programs.h - the data layout shared by tpf_programs.c (the generic policy programs)
 * and the agent (tpfilter.programs), which fills the maps declared in the program.
 *
 * Types and constants only, no map calls: this header may be #included normally (bcc
 * rewrites map calls in the main file only, so those stay in tpf_programs.c).
 *
 * Every size below can be overridden with -D; tpfilter.programs.layout passes the values
 * it uses, so the Python side and the compiled program always agree.
 *
 * How a policy becomes map entries (see tpf_programs.c for how they are read):
 *
 *   tpf_hooks[hook]               number of unfiltered slots and of filtered policies
 *   tpf_slots{hook, slot}         -> {config ID, 0, number of selectors, ...}: the
 *                                    hook's unfiltered entries (every process)
 *   tpf_pcfg{hook, policy ID}     -> {n, slots[n]}: a filtered policy's entries on the
 *                                    hook, found from the candidate index (tpf_programs.c)
 *   tpf_sels{config, selector}    -> the selector: binaries operator, actions, matchArgs
 *   tpf_strs{0, config, sel, arg, string}    string sets (Equal/NotEqual, In/NotIn)
 *   tpf_prefix{len, config, sel, arg, str}   Prefix sets (LPM trie)
 *   tpf_postfix{len, config, sel, arg, rev}  Postfix sets (LPM trie of reversed strings)
 *   tpf_ints{config, sel, arg, value}        integer sets (Equal/NotEqual)
 *
 * A hook is a small integer: a syscall number for syscalls/sys_enter_*, TPF_HOOK_EXEC for
 * sched/sched_process_exec. A config is one hook entry of one policy (its ID is
 * allocated by the agent); a slot is its place in the hook's list of unfiltered entries.
 */
#ifndef TPF_PROGRAMS_H
#define TPF_PROGRAMS_H

#include "tpf_net.h" /* the network arguments of kprobes */
#include "tpf_obj.h" /* the kernel-object arguments of kprobes */

#ifndef TPF_NR_HOOKS
#define TPF_NR_HOOKS 1024
#endif
#ifndef TPF_HOOK_EXEC
#define TPF_HOOK_EXEC (TPF_NR_HOOKS - 1)
#endif
#ifndef TPF_MAX_ANY /* unfiltered entries (policy ID 0) per hook */
#define TPF_MAX_ANY 32
#endif
#ifndef TPF_INDEX_MAX /* policies per candidate index entry (one container, or host) */
#define TPF_INDEX_MAX 48
#endif
#ifndef TPF_MAX_CANDS /* candidates per event: TPF_MAX_ANY + 2 * TPF_INDEX_MAX */
#define TPF_MAX_CANDS 128
#endif
#ifndef TPF_MAX_KEPT /* entries whose filter passed, per event (a power of two) */
#define TPF_MAX_KEPT 128
#endif
#ifndef TPF_MAX_PER_HOOK /* entries of one filtered policy on one hook */
#define TPF_MAX_PER_HOOK 4
#endif
#ifndef TPF_MAX_SELECTORS
#define TPF_MAX_SELECTORS 8
#endif
#ifndef TPF_MAX_ARGS /* matchArgs entries per selector */
#define TPF_MAX_ARGS 5
#endif
#ifndef TPF_NR_VALUES /* integer values of an event: exec pid, old_pid / syscall nr + 6 args */
#define TPF_NR_VALUES 8
#endif

#define TPF_STR_MAX 256     /* string buffer, NUL included: 255 bytes compared at most */
#define TPF_LPM_STR_MAX 248 /* string part of an LPM key: data is 8 + 248 = 256 bytes */

/* tpf_arg.kind */
#define TPF_KIND_INT 1      /* values[src], normalised by .type */
#define TPF_KIND_PATH 2     /* the binary / exec filename (kernel string) */
#define TPF_KIND_USER_STR 3 /* a user-space string at the pointer values[src] */
#define TPF_KIND_NET 5      /* a network argument's tuple ev.net[src] (tpf_net.c) */

/* tpf_arg.type (integers) */
#define TPF_T_S64 1
#define TPF_T_U64 2
#define TPF_T_S32 3
#define TPF_T_U32 4
#define TPF_T_S8 5
#define TPF_T_U8 6
#define TPF_T_S16 7
#define TPF_T_U16 8

/* tpf_arg.op */
#define TPF_OP_EQ 1
#define TPF_OP_NE 2
#define TPF_OP_PREFIX 3
#define TPF_OP_POSTFIX 4
#define TPF_OP_GT 5
#define TPF_OP_LT 6
#define TPF_OP_MASK 7
#define TPF_OP_NOTPREFIX 8  /* readable, and none of the prefixes */
#define TPF_OP_NOTPOSTFIX 9 /* readable, its end known, and none of the suffixes */

/* tpf_sel.bin_op */
#define TPF_BIN_NONE 0
#define TPF_BIN_IN 1
#define TPF_BIN_NOTIN 2

/* actions (bits) */
#define TPF_ACT_POST 1
#define TPF_ACT_SIGKILL 2
#define TPF_ACT_OVERRIDE 4 /* kprobes on security_*: the LSM hook returns tpf_sel.error */
#define TPF_ACT_SIGNAL 8   /* bpf_send_signal(tpf_sel.sig) */
#define TPF_ACT_RET_FILTER 16 /* return probes: the event is held until the return value
				  matches the selector's matchReturnArgs (tpf_retsel.c) */

/* tpf_stats key: (config << 8) | counter */
#define TPF_STAT_MATCH 0   /* a selector matched (whatever the actions) */
#define TPF_STAT_POST 1    /* an event went to the ring buffer */
#define TPF_STAT_SIGKILL 2 /* bpf_send_signal(SIGKILL) succeeded */
#define TPF_STAT_DROP 3    /* the ring buffer was full: event lost */
#define TPF_STAT_ERROR 4   /* an action failed (e.g. bpf_send_signal) */
#define TPF_STAT_SIGNAL 5  /* bpf_send_signal(tpf_sel.sig) succeeded */
#define TPF_STAT_RECORD_LOST 6 /* config 0: a new process got no record (the map is full) */

/* The argument index a string set entry uses for matchBinaries. */
#define TPF_ARG_BINARY 0xff
/* matchReturnArgs entry j keys its integer sets (tpf_ints) as argument TPF_ARG_RET + j. */
#define TPF_ARG_RET 0x80

struct tpf_slot_key {
	u32 hook;
	u32 slot;
};

struct tpf_slot {
	u32 config;    /* config ID: key of its selectors and sets */
	u32 policy_id; /* for policy_filter_check(); 0 = every process */
	u32 nsel;      /* 0: no selectors, every call is posted */
	u32 capture;   /* values[] index of a user string to put in events, 0xff: none */
};

struct tpf_pcfg_key {
	u32 hook;
	u32 policy_id;
};

/* A filtered policy's entries on one hook (a policy may name a tracepoint twice). */
struct tpf_pcfg {
	u32 n;
	u32 pad;
	struct tpf_slot slots[TPF_MAX_PER_HOOK];
};

/*
 * The candidate index's value (bpf/programs/tpf_programs.c, written by the agent's engine:
 * tpfilter/indexmap.py): the IDs of the filtered policies whose inner map holds a
 * container's cgroup (key: that cgroup ID), or that have hostSelector {} (key
 * TPF_HOST_MARKER).
 */
struct tpf_cands {
	u32 n;
	u32 ids[TPF_INDEX_MAX];
};

struct tpf_sel_key {
	u32 config;
	u32 sel;
};

struct tpf_arg {
	u8 kind;   /* TPF_KIND_* */
	u8 src;    /* index into the event's values[] (INT, USER_STR) */
	u8 type;   /* TPF_T_* (INT) */
	u8 op;     /* TPF_OP_* */
	u32 pad;
	u64 imm;   /* GT/LT bound, Mask bits */
};

struct tpf_sel {
	u8 nargs;   /* matchArgs entries used, <= TPF_MAX_ARGS */
	u8 bin_op;  /* TPF_BIN_* */
	u8 actions; /* TPF_ACT_* bits */
	u8 task;    /* 1: task filters in tpf_tsels{config, sel} (tpf_task.h) */
	s16 error;  /* Override's argError (a negative errno, -4095 .. -1) */
	u8 sig;     /* Signal's argSig (1 .. 64) */
	u8 pad;
	struct tpf_arg args[TPF_MAX_ARGS];
};

/*
 * A string with the header of a set key in front of it, so that one buffer is the key of
 * an equality lookup (word0 = 0, all TPF_STR_MAX bytes) and of an LPM lookup (word0 = the
 * prefix length in bits, the first TPF_LPM_STR_MAX bytes).
 */
struct tpf_strbuf {
	u32 word0;
	u32 config;
	u8 sel;
	u8 arg;
	u8 pad[2];
	char s[TPF_STR_MAX];
};

struct tpf_lpm_key {
	u32 prefixlen;
	u32 config;
	u8 sel;
	u8 arg;
	u8 pad[2];
	char s[TPF_LPM_STR_MAX];
};

struct tpf_int_key {
	u32 config;
	u8 sel;
	u8 arg;
	u8 pad[2];
	u64 value;
};

/* What the agent reads from the ring buffer. */
struct tpf_event {
	u64 ktime_ns;  /* bpf_ktime_get_boot_ns() */
	u64 cgroup_id;
	u32 pid;       /* thread group ID (the process) */
	u32 tid;
	u32 config;
	u32 policy_id;
	u32 hook;
	u8 sel;        /* index of the selector that matched, 0xff: no selectors */
	u8 actions;    /* TPF_ACT_* taken */
	u8 flags;      /* TPF_EV_* */
	u8 pad;
	u64 values[TPF_NR_VALUES];
	char comm[16];
	char path[TPF_STR_MAX]; /* the exec filename (sched_process_exec) */
	char str[TPF_STR_MAX];  /* the captured user string argument, if any */
	struct tpf_net_tuple net[TPF_NR_NET]; /* kprobes: the network arguments (tpf_net.c) */
	struct tpf_obj_copy obj[TPF_NR_OBJ];  /* kprobes: the kernel-object arguments (tpf_obj.c) */
};

#define TPF_EV_PATH_LONG 1 /* path was longer than TPF_STR_MAX - 1 bytes: truncated */
#define TPF_EV_STR_SET 2   /* str holds the captured argument */
#define TPF_EV_KILL_FAILED 4
#define TPF_EV_RET_WAIT 8  /* a kprobe with return: true: its return record follows */
#define TPF_EV_RETURN 16   /* the return record of a kretprobe: values[0] is the value */
#define TPF_EV_RET_DONE 32 /* an event held for matchReturnArgs, posted by the kretprobe
			      with its return value in values[0]: complete, nothing to join */

/*
 * tpf_retwait's value ((task, hook) -> its call's waits): how many events of the call are
 * held for matchReturnArgs (tpf_retpend, tpf_retsel.c), and whether events were posted
 * that wait for the return record (retjoin).
 */
#define TPF_RW_HELD_SHIFT 16 /* 8 bits: held events, <= TPF_MAX_RETPEND */
#define TPF_RW_RECORD (1u << 24)
#ifndef TPF_MAX_RETPEND /* events held for matchReturnArgs per call (the return probe's */
#define TPF_MAX_RETPEND 4 /* loop: verifier cost grows with it) */
#endif

struct tpf_ret_key {
	u64 id; /* pid_tgid */
	u32 hook;
	u32 n; /* tpf_retpend: the held event's number in its call; tpf_retwait: 0 */
};

/* A selector's matchReturnArgs (tpf_retsel.c): compared with the return value. */
struct tpf_rsel {
	u8 nargs; /* entries used, <= TPF_MAX_ARGS; ANDed */
	u8 shift; /* the returnArg's type, as which the value is compared: 64 - its bits */
	u8 sign;  /* 1: signed (sign-extended, signed order) */
	u8 pad[5];
	struct tpf_arg args[TPF_MAX_ARGS]; /* op and imm; GT/LT on a signed type: imm with its
					      sign bit flipped (one unsigned comparison) */
};

/* An Override verdict waiting for the BPF LSM program of the hook it was made for. */
struct tpf_verdict {
	s32 error; /* argError, a negative errno */
	u32 hook;  /* the kprobe hook (security_<lsm hook>) whose selector decided */
};

/* A string read once per event (and its reverse, made on demand for Postfix). */
struct tpf_str {
	struct tpf_strbuf fwd;
	struct tpf_strbuf rev;
	s32 len;      /* bytes before the NUL; < 0: not readable */
	u8 too_long;  /* the source did not fit: only Prefix and NotEqual can be answered */
	u8 rev_ready;
	u8 src;       /* which values[] pointer (user strings), 0xff: none loaded */
	u8 pad;
};

struct tpf_scratch {
	struct tpf_event ev;
	struct tpf_str path;
	struct tpf_str ustr;
};

#endif /* TPF_PROGRAMS_H */
