/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tpf_net.c - the network arguments of kprobes: appended to tpf_programs.c's text after
 * tpf_kprobe.c (bcc rewrites map calls in its main text only) where the node's BTF has every
 * offset below (-DTPF_WITH_NET and -DTPF_OFF_*: tpfilter.programs.netargs.net_cflags).
 *
 *   tpf_kstage_net  a stage of the kprobe program, run after FILTER for an event that some
 *                   selected entry will look at (tpf_kstage_filter sends it here when the
 *                   hook reads network arguments): reads each network argument of the hook
 *                   into the event's tuple (ev.net[k]), then -> PATH or STRINGS. A task that
 *                   no policy selects never pays the reads.
 *   tpf_net_match   a network matchArgs entry (tpf_sel_match in tpf_programs.c calls it):
 *                   one lookup in tpf_netsets, an LPM trie keyed by the entry, so a CIDR, a
 *                   port range (a few prefixes of the 16-bit port) and an exact value are
 *                   the same lookup, whatever the number of values.
 *
 * Every struct offset comes from the running kernel's BTF. The IP, IPv6, TCP and UDP headers
 * of a packet and sockaddr_in/_in6's family are wire or UAPI formats, fixed.
 */

BPF_F_TABLE("lpm_trie", struct tpf_net_key, u8, tpf_netsets, TPF_MAX_SET_ENTRIES,
	    BPF_F_NO_PREALLOC);

#define TPF_AF_INET 2
#define TPF_AF_INET6 10

static __always_inline void tpf_net_sock(struct tpf_net_tuple *t, void *sk)
{
	u16 num = 0, dport = 0;

	bpf_probe_read_kernel(&t->family, 2, (char *)sk + TPF_OFF_SKC_FAMILY);
	bpf_probe_read_kernel(&t->state, 1, (char *)sk + TPF_OFF_SKC_STATE);
	bpf_probe_read_kernel(&t->protocol, 2, (char *)sk + TPF_OFF_SK_PROTOCOL);
	bpf_probe_read_kernel(&num, 2, (char *)sk + TPF_OFF_SKC_NUM);
	bpf_probe_read_kernel(&dport, 2, (char *)sk + TPF_OFF_SKC_DPORT);
	t->sport = num; /* skc_num: host order */
	t->dport = bpf_ntohs(dport);
	if (t->family == TPF_AF_INET) {
		bpf_probe_read_kernel(t->saddr, 4, (char *)sk + TPF_OFF_SKC_RCV_SADDR);
		bpf_probe_read_kernel(t->daddr, 4, (char *)sk + TPF_OFF_SKC_DADDR);
	} else if (t->family == TPF_AF_INET6) {
		bpf_probe_read_kernel(t->saddr, 16, (char *)sk + TPF_OFF_SKC_V6_RCV_SADDR);
		bpf_probe_read_kernel(t->daddr, 16, (char *)sk + TPF_OFF_SKC_V6_DADDR);
	}
}

static __always_inline void tpf_net_sockaddr(struct tpf_net_tuple *t, void *sa)
{
	u16 port = 0;

	bpf_probe_read_kernel(&t->family, 2, sa); /* sa_family: the first member, UAPI */
	if (t->family == TPF_AF_INET) {
		bpf_probe_read_kernel(&port, 2, (char *)sa + TPF_OFF_SIN_PORT);
		bpf_probe_read_kernel(t->saddr, 4, (char *)sa + TPF_OFF_SIN_ADDR);
	} else if (t->family == TPF_AF_INET6) {
		bpf_probe_read_kernel(&port, 2, (char *)sa + TPF_OFF_SIN6_PORT);
		bpf_probe_read_kernel(t->saddr, 16, (char *)sa + TPF_OFF_SIN6_ADDR);
	}
	t->sport = bpf_ntohs(port);
}

/* The packet's IP header at head + network_header, then its TCP/UDP ports. */
static __always_inline void tpf_net_skb(struct tpf_net_tuple *t, void *skb)
{
	char *head = 0, *ip, *l4 = 0;
	u16 nh = 0, ports[2] = {};
	u8 b0 = 0, proto = 0;

	bpf_probe_read_kernel(&head, sizeof(head), (char *)skb + TPF_OFF_SKB_HEAD);
	bpf_probe_read_kernel(&nh, 2, (char *)skb + TPF_OFF_SKB_NETWORK_HEADER);
	if (!head || nh == 0xffff) {
		t->kind = 0; /* no network header set: unreadable */
		return;
	}
	ip = head + nh;
	bpf_probe_read_kernel(&b0, 1, ip);
	if (b0 >> 4 == 4) {
		t->family = TPF_AF_INET;
		bpf_probe_read_kernel(&proto, 1, ip + 9);
		bpf_probe_read_kernel(t->saddr, 4, ip + 12);
		bpf_probe_read_kernel(t->daddr, 4, ip + 16);
		l4 = ip + 4 * (b0 & 0xf);
	} else if (b0 >> 4 == 6) {
		t->family = TPF_AF_INET6;
		bpf_probe_read_kernel(&proto, 1, ip + 6); /* nexthdr: extension headers not walked */
		bpf_probe_read_kernel(t->saddr, 16, ip + 8);
		bpf_probe_read_kernel(t->daddr, 16, ip + 24);
		l4 = ip + 40;
	} else {
		t->kind = 0;
		return;
	}
	t->protocol = proto;
	if (proto == 6 || proto == 17 || proto == 136 || proto == 132) { /* TCP, UDP(-Lite), SCTP */
		bpf_probe_read_kernel(ports, 4, l4);
		t->sport = bpf_ntohs(ports[0]);
		t->dport = bpf_ntohs(ports[1]);
	}
}

static __always_inline void tpf_net_read(struct tpf_net_tuple *t, u8 kind, void *p)
{
	void *sk = 0;

	__builtin_memset(t, 0, sizeof(*t));
	if (!kind || !p)
		return;
	t->kind = kind;
	switch (kind) {
	case TPF_NET_SOCKET:
		bpf_probe_read_kernel(&sk, sizeof(sk), (char *)p + TPF_OFF_SOCKET_SK);
		if (!sk) {
			t->kind = 0;
			return;
		}
		tpf_net_sock(t, sk);
		return;
	case TPF_NET_SOCK:
		tpf_net_sock(t, p);
		return;
	case TPF_NET_SOCKADDR:
		tpf_net_sockaddr(t, p);
		return;
	case TPF_NET_SKB:
		tpf_net_skb(t, p);
		return;
	}
	t->kind = 0;
}

int tpf_kstage_net(struct pt_regs *ctx)
{
	struct tpf_work *w;
	struct tpf_khook *kh;

	if (!tpf_khook_of(&w, &kh))
		return 0;
#pragma unroll
	for (int k = 0; k < TPF_NR_NET; k++)
		tpf_net_read(&w->sc.ev.net[k], kh->net_kind[k],
			     (void *)w->sc.ev.values[(kh->net_arg[k] + 1) & 7]);
	tpf_kstages.call(ctx, w->path_kind ? TPF_STAGE_PATH : TPF_STAGE_STRINGS);
	return 0;
}

/* A network matchArgs entry: the tuple's field in the entry's set (Not…: in none of it). A
 * tuple not read, or an address of neither IPv4 nor IPv6, matches no operator. */
static __always_inline bool tpf_net_match(struct tpf_work *w, struct tpf_arg *a, u32 config,
					  u8 sel, u8 arg)
{
	struct tpf_net_tuple *t = &w->sc.ev.net[a->src & (TPF_NR_NET - 1)];
	struct tpf_net_key key = {};
	u16 v = 0;
	bool in;

	if (!t->kind)
		return false;
	key.config = config;
	key.sel = sel;
	key.arg = arg;
	switch (a->op) {
	case TPF_OP_SADDR:
	case TPF_OP_DADDR:
		if (t->family == TPF_AF_INET) {
			key.family = 4;
			key.prefixlen = 64 + 32;
		} else if (t->family == TPF_AF_INET6) {
			key.family = 6;
			key.prefixlen = 64 + 128;
		} else {
			return false;
		}
		__builtin_memcpy(key.data, a->op == TPF_OP_SADDR ? t->saddr : t->daddr, 16);
		break;
	case TPF_OP_SPORT:
		v = t->sport;
		break;
	case TPF_OP_DPORT:
		v = t->dport;
		break;
	case TPF_OP_PROTOCOL:
		v = t->protocol;
		break;
	case TPF_OP_FAMILY:
		v = t->family;
		break;
	case TPF_OP_STATE:
		v = t->state;
		break;
	default:
		return false;
	}
	if (!key.prefixlen) {
		key.prefixlen = 64 + 16;
		key.data[0] = v >> 8;
		key.data[1] = v & 0xff;
	}
	in = tpf_netsets.lookup(&key) != NULL;
	return in != (a->imm & 1);
}
