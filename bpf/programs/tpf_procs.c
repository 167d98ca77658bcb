/* SPDX-License-Identifier: Apache-2.0 */
/*
 * tpf_procs.c - keeping the process records of matchNamespaceChanges and
 * matchCapabilityChanges (struct tpf_proc, tpf_task.h) in tpf_procs_maps[0].
 *
 * Appended to tpf_programs.c's text (bcc makes programs only of its main text). Two raw
 * tracepoints, attached by the agent only while a loaded policy needs records
 * (tpfilter/programs/procrecords.py, which also records the processes already running,
 * from /proc):
 *
 *   sched_process_fork  a new process (not a thread): its record is what it has now, just
 *                       cloned (Tetragon takes it at wake_up_new_task: the same moment).
 *                       An exec keeps the record, as in Tetragon: a change before exec is
 *                       still a change.
 *   sched_process_exit  the thread group leader ends: its record goes.
 *
 * A full map is counted (config 0, TPF_STAT_RECORD_LOST): the agent reports it; such a
 * process has no record and matches no change selector.
 */

int tpf_rec_fork(struct bpf_raw_tracepoint_args *ctx)
{
#ifdef TPF_WITH_TASK
	u64 child = ctx->args[1], f[TPF_F_CAPS + 3] = {}, pid, pidns;
	struct tpf_proc rec = {};
	void *recs = tpf_procs();
	u32 tgid, level;

	if (!recs)
		return 0;
	tgid = tpf_rd_u32(child, TPF_TOFF_TASK_TGID);
	if (!tgid || tgid == bpf_get_current_pid_tgid() >> 32)
		return 0; /* a thread of the caller's process: the process has its record */
	tpf_task_ids(f, child, &pid, &level, &pidns);
	tpf_proc_of(&rec, f);
	if (bpf_map_update_elem(recs, &tgid, &rec, BPF_ANY) != 0)
		tpf_count(0, TPF_STAT_RECORD_LOST);
#endif
	return 0;
}

int tpf_rec_exit(struct bpf_raw_tracepoint_args *ctx)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32;
	void *recs;

	if ((u32)id != tgid)
		return 0; /* a thread: the process lives on */
	recs = tpf_procs();
	if (recs)
		bpf_map_delete_elem(recs, &tgid);
	return 0;
}
