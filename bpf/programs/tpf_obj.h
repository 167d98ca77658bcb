/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tpf_obj.h - types of the kernel-object arguments of kprobes (cred, user_namespace, module,
 * bpf_map, bpf_attr, perf_event, net_device, iov_iter), shared by tpf_programs.h (the event
 * carries the copies), tpf_obj.c (the reader) and the agent (tpfilter.programs.objargs
 * writes the field lists and decodes the copies). Types only.
 *
 * One generic reader instead of one per type: what an object argument is read as is a
 * list of field copies (offset, size, optionally through one pointer member first) that the
 * agent computes from the node's BTF when it compiles a policy and writes into the hook's
 * tpf_khook; the program copies those bytes into the event, and the agent names them
 * (Tetragon's field names). A new type is a new field list, not new BPF code.
 */
#ifndef TPF_OBJ_H
#define TPF_OBJ_H

#define TPF_NR_OBJ 2      /* object arguments read per hook (the function's first two) */
#define TPF_OBJ_FIELDS 16 /* field copies per object argument (adjacent ones are merged) */
#define TPF_OBJ_BYTES 192 /* an object's copy: dst < 128 and size < 64 always fit */
#define TPF_OBJ_DST_MASK 0x7f
#define TPF_OBJ_SIZE_MASK 0x3f

#define TPF_OBJ_NO_HOP 0xffff
#define TPF_OBJ_STRPTR 1 /* the field is a char *: the string it points to (kernel, then user) */

struct tpf_obj_field {
	u16 off;   /* offset in the struct (the argument's, or the hop's target) */
	u16 hop;   /* TPF_OBJ_NO_HOP, or the offset of a pointer member followed first */
	u8 size;   /* bytes copied (a string: at most, NUL included); 0: unused */
	u8 dst;    /* where the bytes go in the event's copy */
	u8 flags;  /* TPF_OBJ_* */
	u8 pad;
};

/* How one object argument is read (tpf_khook.obj[k]); nfields 0: none. */
struct tpf_obj_spec {
	u8 arg;     /* the argument: values[arg + 1] points to the object */
	u8 nfields;
	u8 pad[6];
	struct tpf_obj_field f[TPF_OBJ_FIELDS];
};

/* An object argument in the event: read = 0 if the pointer was NULL or not read. */
struct tpf_obj_copy {
	u8 read;
	u8 pad[7];
	u8 data[TPF_OBJ_BYTES];
};

#endif /* TPF_OBJ_H */
