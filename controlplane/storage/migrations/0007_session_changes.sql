-- Every change to what a status poll shows (a session, its interactions, their question/answer
-- pairs) is announced on the channel `helix_session_changed`, the payload the session's id;
-- NOTIFY folds repeats within a transaction and is sent at commit. Each control-plane process
-- keeps recent status-poll answers (controlplane/sessions/cache.py) and drops one on hearing of it;
-- a TRUNCATE announces '*': drop them all.
CREATE FUNCTION helix_session_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    session_id text;
BEGIN
    IF TG_TABLE_NAME = 'sessions' THEN
        session_id := CASE WHEN TG_OP = 'DELETE' THEN OLD.id ELSE NEW.id END;
    ELSIF TG_TABLE_NAME = 'interactions' THEN
        session_id := CASE WHEN TG_OP = 'DELETE' THEN OLD.session_id ELSE NEW.session_id END;
    ELSE  -- qa_pairs: through its interaction (gone already when the interaction's delete cascades)
        SELECT i.session_id INTO session_id FROM interactions i
         WHERE i.id = CASE WHEN TG_OP = 'DELETE' THEN OLD.interaction_id ELSE NEW.interaction_id END;
    END IF;
    IF session_id IS NOT NULL THEN
        PERFORM pg_notify('helix_session_changed', session_id);
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION helix_sessions_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('helix_session_changed', '*');
    RETURN NULL;
END $$;

CREATE TRIGGER sessions_changed AFTER INSERT OR UPDATE OR DELETE ON sessions
    FOR EACH ROW EXECUTE FUNCTION helix_session_changed();
CREATE TRIGGER interactions_changed AFTER INSERT OR UPDATE OR DELETE ON interactions
    FOR EACH ROW EXECUTE FUNCTION helix_session_changed();
CREATE TRIGGER qa_pairs_changed AFTER INSERT OR UPDATE OR DELETE ON qa_pairs
    FOR EACH ROW EXECUTE FUNCTION helix_session_changed();
CREATE TRIGGER sessions_truncated AFTER TRUNCATE ON sessions
    FOR EACH STATEMENT EXECUTE FUNCTION helix_sessions_truncated();
CREATE TRIGGER interactions_truncated AFTER TRUNCATE ON interactions
    FOR EACH STATEMENT EXECUTE FUNCTION helix_sessions_truncated();
CREATE TRIGGER qa_pairs_truncated AFTER TRUNCATE ON qa_pairs
    FOR EACH STATEMENT EXECUTE FUNCTION helix_sessions_truncated();
