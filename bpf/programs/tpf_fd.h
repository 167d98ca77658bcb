/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tpf_fd.h - an fd argument's struct file, looked up in the calling task's file table at
 * the call (included by tpf_kprobe.c with the path walk, -DTPF_WITH_FD).
 *
 * Tetragon remembers fd -> file name in a map that FollowFD fills at fd_install; reading
 * the table where the fd is used needs no such map and cannot go stale (a closed and
 * reused number names the file it is open on now). task->files->fdt->fd[fd], every
 * offset from the node's BTF (tpfilter/programs/fileargs.py): the fd is bounds-checked
 * against the table's max_fds before its slot is read, so a bogus number reads no memory
 * past the array. A number that is not open (NULL slot), negative (as an int) or out of
 * range gives no file: the argument is unreadable and matches no operator.
 */
#ifndef TPF_FD_H
#define TPF_FD_H

static __always_inline void *tpf_fd_file(u64 value)
{
	void *task = (void *)bpf_get_current_task();
	void *files = 0, *fdt = 0, *slots = 0, *file = 0;
	u32 fd = (u32)value; /* an int or unsigned int parameter: its low 32 bits */
	u32 max_fds = 0;

	bpf_probe_read_kernel(&files, sizeof(files), (char *)task + TPF_FOFF_TASK_FILES);
	if (!files)
		return 0; /* an exiting task: its table is gone */
	bpf_probe_read_kernel(&fdt, sizeof(fdt), (char *)files + TPF_FOFF_FILES_FDT);
	if (!fdt)
		return 0;
	bpf_probe_read_kernel(&max_fds, sizeof(max_fds), (char *)fdt + TPF_FOFF_FDT_MAX_FDS);
	if (fd >= max_fds) /* also every negative int: (u32)-1 is past any table */
		return 0;
	bpf_probe_read_kernel(&slots, sizeof(slots), (char *)fdt + TPF_FOFF_FDT_FD);
	if (!slots)
		return 0;
	bpf_probe_read_kernel(&file, sizeof(file), (char *)slots + (u64)fd * sizeof(void *));
	return file;
}

#endif
