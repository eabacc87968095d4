-- Fair share of the fleet between users: each unfinished system interaction's current job, by its
-- owner and the RQ queue it goes to. A job is released (queued in Redis) while its owner has fewer
-- than their share of the queue's workers; the rest wait here, oldest first, and are released as
-- the owner's running jobs end. An interaction with no row here (work from before this table) is
-- treated as released.
CREATE TABLE queued_work (
    interaction_id  text PRIMARY KEY REFERENCES interactions(id) ON DELETE CASCADE,
    owner           text NOT NULL,
    queue           text NOT NULL,
    submitted       timestamptz NOT NULL DEFAULT clock_timestamp(),
    released        timestamptz
);
CREATE INDEX queued_work_by_owner ON queued_work(queue, owner, submitted);
CREATE INDEX queued_work_held ON queued_work(queue, owner, submitted) WHERE released IS NULL;
CREATE INDEX queued_work_released ON queued_work(queue, owner) WHERE released IS NOT NULL;
