/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tpf_net.h - types of the network arguments of kprobes (sock, socket, sockaddr, skb), shared
 * by tpf_programs.h (the event carries the tuples), tpf_net.c (the readers and the matchArgs
 * operators) and the agent (tpfilter.programs.netargs decodes and writes them). Types only.
 *
 * A kprobe hook reads at most TPF_NR_NET network arguments into tuples, in the order the
 * function's parameters have them (the hook's, not a policy's: every entry on a function
 * agrees), once per event and only for a task some entry's policy selects.
 */
#ifndef TPF_NET_H
#define TPF_NET_H

#define TPF_NR_NET 2

/* tpf_net_tuple.kind: what the argument is (tpf_khook.net_kind) */
#define TPF_NET_SOCK 1     /* struct sock * */
#define TPF_NET_SOCKET 2   /* struct socket *: its sk */
#define TPF_NET_SOCKADDR 3 /* struct sockaddr *: family, address and port (saddr, sport) */
#define TPF_NET_SKB 4      /* struct sk_buff *: from its IP and TCP/UDP headers */

/* tpf_arg.op of a network matchArgs entry; tpf_arg.imm bit 0: Not… (none of the values) */
#define TPF_OP_SADDR 10
#define TPF_OP_DADDR 11
#define TPF_OP_SPORT 12
#define TPF_OP_DPORT 13
#define TPF_OP_PROTOCOL 14
#define TPF_OP_FAMILY 15
#define TPF_OP_STATE 16

struct tpf_net_tuple {
	u8 saddr[16]; /* network order; IPv4: the first 4 bytes */
	u8 daddr[16];
	u16 family;   /* AF_* */
	u16 protocol; /* IPPROTO_* */
	u16 sport;    /* host order */
	u16 dport;
	u8 state;     /* TCP_* (sock, socket) */
	u8 kind;      /* TPF_NET_*, 0: not read */
	u8 pad[6];
};

/*
 * A key of tpf_netsets (LPM trie): the matchArgs entry (config, sel, arg), then the value.
 * Addresses: family 4 or 6 and the address bytes (a CIDR is a prefix of them); the other
 * fields: family 0 and the value as 16 bits, big-endian (a port range is a few prefixes).
 */
struct tpf_net_key {
	u32 prefixlen;
	u32 config;
	u8 sel;
	u8 arg;
	u8 family;
	u8 pad;
	u8 data[16];
};

#endif /* TPF_NET_H */
