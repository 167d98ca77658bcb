/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tpf_retsel.c - matchReturnArgs: a selector's filter on the return value of a kprobe with
 * `return: true`. Part of tpf_programs.c (appended to its text before tpf_kprobe.c when the
 * node has kprobes; bcc rewrites map calls only in its main text).
 *
 * Tetragon evaluates matchReturnArgs in its return probe: a call whose return value does
 * not match posts no event. The selector decides at the entry (where Sigkill and Override
 * act; the compiler refuses them, and NoPost, beside matchReturnArgs: they could not depend
 * on a value that is not known yet), but its event is not posted there: it is held here,
 * keyed by the task, the hook and its number in the call, and the return probe
 * (tpf_kretprobe) compares the return value with the selector's filter (tpf_rsels, written
 * by the agent at policy load: tpfilter/programs/retsel.py) and posts it, complete with the
 * value, only if it matches. Nothing reaches user space for a return that does not match.
 *
 * The return value is compared as the returnArg's type, with the matchArgs integer
 * operators (tpf_ret_match): Equal/NotEqual sets are in tpf_ints under argument
 * TPF_ARG_RET + j.
 */

/* The held events: (task, hook, n) -> the event as the entry would have posted it. */
BPF_F_TABLE("hash", struct tpf_ret_key, struct tpf_event, tpf_retpend, 4096, BPF_F_NO_PREALLOC);
/* The selectors' matchReturnArgs, by (config, selector): present iff the selector has one. */
BPF_F_TABLE("hash", struct tpf_sel_key, struct tpf_rsel, tpf_rsels, TPF_MAX_SEL_ENTRIES,
	    BPF_F_NO_PREALLOC);

/* Called by tpf_act for a selector with TPF_ACT_RET_FILTER: hold its event. A call that
 * holds more than TPF_MAX_RETPEND, or a full map, loses the event: counted as dropped. */
static __always_inline void tpf_ret_hold(struct tpf_work *w, u32 config)
{
	struct tpf_ret_key key = {};
	u32 held = (w->retwait >> TPF_RW_HELD_SHIFT) & 0xff, value;
	u64 id = bpf_get_current_pid_tgid();

	if (held >= TPF_MAX_RETPEND) {
		tpf_count(config, TPF_STAT_DROP);
		return;
	}
	key.id = id;
	key.hook = w->hook;
	key.n = held;
	if (tpf_retpend.update(&key, &w->sc.ev) != 0) {
		tpf_count(config, TPF_STAT_DROP);
		return;
	}
	w->retwait += 1 << TPF_RW_HELD_SHIFT;
	value = w->retwait;
	key.n = 0;
	if (tpf_retwait.update(&key, &value) != 0)
		tpf_count(config, TPF_STAT_DROP); /* the return probe will not find it */
}

/*
 * Does the return value match selector s of config's matchReturnArgs (all its entries)?
 * Few branches on purpose: the return probe runs this for up to TPF_MAX_RETPEND held events
 * and Debian 6.1's verifier gave up on the general integer comparison (tpf_int_match, a
 * branch per type and sign in each entry) inlined there ("sequence of 8193 jumps is too
 * complex"). The value is normalised as the returnArg's type by arithmetic, not a branch
 * per type (a narrower type: its low bits, sign-extended if signed); a signed order is an
 * unsigned one with the sign bits flipped (the agent stores GT/LT bounds so).
 */
static __always_inline bool tpf_ret_match(u32 config, u8 s, u64 ret)
{
	struct tpf_sel_key skey = {.config = config, .sel = s};
	struct tpf_rsel *rs = tpf_rsels.lookup(&skey);
	struct tpf_int_key ikey = {};
	u64 v, m, flip;
	u32 n, sh;

	if (!rs)
		return false; /* the policy went away or is being rewritten: no decision */
	sh = rs->shift & 63;
	m = -(u64)(rs->sign & 1); /* all ones for a signed type */
	v = ((u64)((s64)(ret << sh) >> sh) & m) | (((ret << sh) >> sh) & ~m);
	flip = m & (1ULL << 63);
	n = rs->nargs;
	ikey.config = config;
	ikey.sel = s;
	ikey.value = v;
#pragma clang loop unroll(disable)
	for (u32 j = 0; j < TPF_MAX_ARGS; j++) {
		struct tpf_arg *a;
		u32 k = j;
		bool ok;

		asm volatile("" : "+r"(k)); /* else clang merges the two bounds (as below) */
		if (k >= n)
			break;
		a = &rs->args[k];
		ikey.arg = TPF_ARG_RET + k; /* on every path: states that differ in it do not merge */
		switch (a->op) {
		case TPF_OP_EQ:
		case TPF_OP_NE:
			ok = (tpf_ints.lookup(&ikey) != NULL) == (a->op == TPF_OP_EQ);
			break;
		case TPF_OP_GT:
			ok = (v ^ flip) > a->imm;
			break;
		case TPF_OP_LT:
			ok = (v ^ flip) < a->imm;
			break;
		case TPF_OP_MASK:
			ok = (v & a->imm) != 0;
			break;
		default:
			ok = false;
		}
		if (!ok)
			return false;
	}
	return true;
}

/* At the return: post the call's held events whose selector's filter the value matches,
 * with the value; forget them all. */
static __always_inline void tpf_ret_release(u64 id, u32 hook, u32 held, u64 ret)
{
	struct tpf_ret_key key = {};
	struct tpf_event *ev;

	key.id = id;
	key.hook = hook;
#pragma clang loop unroll(disable)
	for (u32 i = 0; i < TPF_MAX_RETPEND; i++) {
		u32 k = i;

		asm volatile("" : "+r"(k)); /* clang merged the two bounds into one that 6.1's
					       verifier could not follow */
		if (k >= held)
			break;
		key.n = k;
		ev = tpf_retpend.lookup(&key);
		if (!ev)
			continue;
		if (tpf_ret_match(ev->config, ev->sel, ret)) {
			ev->values[0] = ret;
			ev->flags = (ev->flags & ~TPF_EV_RET_WAIT) | TPF_EV_RETURN | TPF_EV_RET_DONE;
			if (tpf_events.ringbuf_output(ev, sizeof(*ev), 0) == 0)
				tpf_count(ev->config, TPF_STAT_POST);
			else
				tpf_count(ev->config, TPF_STAT_DROP);
		}
		tpf_retpend.delete(&key);
	}
}
