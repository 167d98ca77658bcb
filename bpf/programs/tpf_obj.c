/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tpf_obj.c - the kernel-object arguments of kprobes (types in tpf_obj.h): appended to
 * tpf_programs.c's text after tpf_kprobe.c (bcc rewrites map calls in its main text only).
 *
 *   tpf_kstage_obj  a stage of the kprobe program, run after FILTER for an event that some
 *                   selected entry will look at (tpf_kstage_filter sends it here when the
 *                   hook reads object arguments): copies each object argument's fields
 *                   into the event (ev.obj[k]), then -> NET, PATH or STRINGS. A task that
 *                   no policy selects never pays the reads.
 *
 * The program knows no struct: the offsets, sizes and the pointer to follow come from the
 * hook's tpf_khook, written by the agent from the node's BTF (tpfilter.programs.objargs).
 * The fields compared by selectors are not read here: a capability is an integer argument
 * (values[]), a net_device's name a kernel string read in STRINGS (tpf_work.str_add).
 */

static __always_inline void tpf_obj_read(struct tpf_obj_copy *c, struct tpf_obj_spec *spec,
					 char *base)
{
	__builtin_memset(c, 0, sizeof(*c));
	if (!spec->nfields || !base)
		return;
	c->read = 1;
#pragma unroll
	for (int i = 0; i < TPF_OBJ_FIELDS; i++) {
		struct tpf_obj_field *f = &spec->f[i];
		u8 *dst = &c->data[f->dst & TPF_OBJ_DST_MASK];
		u32 size = f->size & TPF_OBJ_SIZE_MASK;
		char *src = base;

		if (i >= spec->nfields)
			break;
		if (f->hop != TPF_OBJ_NO_HOP) {
			src = 0;
			bpf_probe_read_kernel(&src, sizeof(src), base + f->hop);
			if (!src)
				continue; /* left zero */
		}
		src += f->off;
		if (f->flags & TPF_OBJ_STRPTR) {
			char *p = 0;

			bpf_probe_read_kernel(&p, sizeof(p), src);
			if (bpf_probe_read_kernel_str(dst, size, p) < 0)
				bpf_probe_read_user_str(dst, size, p);
		} else {
			bpf_probe_read_kernel(dst, size, src);
		}
	}
}

int tpf_kstage_obj(struct pt_regs *ctx)
{
	struct tpf_work *w;
	struct tpf_khook *kh;
	int next;

	if (!tpf_khook_of(&w, &kh))
		return 0;
#pragma unroll
	for (int k = 0; k < TPF_NR_OBJ; k++)
		tpf_obj_read(&w->sc.ev.obj[k], &kh->obj[k],
			     (char *)w->sc.ev.values[(kh->obj[k].arg + 1) & 7]);
	next = w->path_kind ? TPF_STAGE_PATH : TPF_STAGE_STRINGS;
#ifdef TPF_WITH_NET
	if (kh->net_kind[0] || kh->net_kind[1])
		next = TPF_STAGE_NET;
#endif
	tpf_kstages.call(ctx, next);
	return 0;
}
