-- The reconciler pages through unfinished system interactions by (created, id).
DROP INDEX IF EXISTS interactions_unfinished;
CREATE INDEX interactions_unfinished ON interactions(created, id) WHERE NOT finished AND creator = 'system';
