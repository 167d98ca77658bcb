/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tpf_path.h - a path's name, walked in the program from its dentry up to the root of the
 * process's mount namespace, crossing mounts. Shared by the kprobe program (a `file` or
 * `path` argument, tpf_kprobe.c) and the binary stage of every hook (the executable of the
 * task and of its ancestors, tpf_binary.c). bpf_d_path is allowed in neither kprobe nor
 * tracepoint programs, hence the walk.
 *
 * Every struct offset comes from the node's BTF (-D TPF_OFF_*: tpfilter/programs/
 * pathwalk.py); without them TPF_WITH_PATHS is not defined and nothing here is compiled
 * (the compiler then refuses what would need it). Pure: helper calls only, no map calls
 * (bcc rewrites map calls in its main text only). Needs tpf_str_reset/tpf_str_done
 * (tpf_programs.c) before it.
 */
#ifndef TPF_PATH_H
#define TPF_PATH_H
#ifdef TPF_WITH_PATHS

#ifndef TPF_PATH_DEPTH /* dentries and mount crossings walked, at most */
#define TPF_PATH_DEPTH 32
#endif
#define TPF_PBUF_END (2 * TPF_STR_MAX - 1) /* the walk writes below this; NUL here */

static __always_inline void *tpf_kptr(void *base, u32 off)
{
	void *p = 0;

	bpf_probe_read_kernel(&p, sizeof(p), (char *)base + off);
	return p;
}

/*
 * The name of the struct path at `path` (one_fs: of the struct dentry at `path`) into
 * `out`, as the process sees it from the root of its mount namespace (for a container: its
 * own root), built from the end of `pbuf` (3 * TPF_STR_MAX bytes): each dentry's name,
 * then its parent's, crossing to the mount point's dentry at the root of each mount; the
 * walk stops at the namespace's root mount (its own parent), or for a dentry (no mount) at
 * the root of its file system. A walk that does not reach it within TPF_PATH_DEPTH steps,
 * or a name longer than the buffer, leaves `out` unreadable (it then matches no operator):
 * an end without its beginning would answer Prefix wrong. A dentry cut from any tree (a
 * pipe's, a socket's, a memfd's) has no path, and a NULL `path` none: unreadable.
 */
static __always_inline void tpf_path_name(char *pbuf, void *path, bool one_fs,
					  struct tpf_str *out)
{
	void *dentry, *vfsmnt = 0, *mnt = 0, *root, *parent, *mparent;
	u32 pos = TPF_PBUF_END, len = 0, off;
	const char *name;
	long n = -1;

	if (one_fs) {
		dentry = path;
	} else {
		dentry = path ? tpf_kptr(path, TPF_OFF_PATH_DENTRY) : 0;
		vfsmnt = path ? tpf_kptr(path, TPF_OFF_PATH_MNT) : 0;
		mnt = (char *)vfsmnt - TPF_OFF_MOUNT_MNT;
	}
	if (!dentry) {
		tpf_str_reset(out);
		return;
	}
	pbuf[TPF_PBUF_END] = 0;
#pragma unroll
	for (int i = 0; i < TPF_PATH_DEPTH; i++) {
		root = one_fs ? 0 : tpf_kptr(vfsmnt, TPF_OFF_VFSMOUNT_ROOT);
		parent = tpf_kptr(dentry, TPF_OFF_DENTRY_PARENT);
		if (one_fs && dentry == parent) {
			n = 0; /* the root of the dentry's file system: no mount to cross to */
			break;
		}
		if (dentry == root || dentry == parent) {
			if (dentry != root)
				break; /* cut from its tree (a pipe, a socket, a memfd): no path */
			mparent = tpf_kptr(mnt, TPF_OFF_MOUNT_PARENT);
			if (mparent == mnt) {
				n = 0; /* the namespace's root */
				break;
			}
			dentry = tpf_kptr(mnt, TPF_OFF_MOUNT_MOUNTPOINT);
			mnt = mparent;
			vfsmnt = (char *)mnt + TPF_OFF_MOUNT_MNT;
			continue;
		}
		/* struct qstr: {u32 hash, u32 len} (little-endian hash_len), then name */
		bpf_probe_read_kernel(&len, sizeof(len),
				      (char *)dentry + TPF_OFF_DENTRY_NAME + 4);
		name = tpf_kptr(dentry, TPF_OFF_DENTRY_NAME + TPF_OFF_QSTR_NAME);
		if (len >= TPF_STR_MAX || len + 1 > pos)
			break; /* longer than the buffer: unreadable */
		pos -= len;
		off = pos & (2 * TPF_STR_MAX - 1);
		bpf_probe_read_kernel(&pbuf[off], len & (TPF_STR_MAX - 1), name);
		pos -= 1;
		pbuf[pos & (2 * TPF_STR_MAX - 1)] = '/';
		dentry = parent;
	}
	tpf_str_reset(out);
	if (n < 0)
		return;
	if (pos == TPF_PBUF_END) { /* the root itself */
		pos -= 1;
		pbuf[pos] = '/';
	}
	tpf_str_done(out, bpf_probe_read_kernel_str(out->fwd.s, TPF_STR_MAX,
						    &pbuf[pos & (2 * TPF_STR_MAX - 1)]));
}

#endif /* TPF_WITH_PATHS */
#endif /* TPF_PATH_H */
