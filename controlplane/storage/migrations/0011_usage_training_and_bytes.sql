-- Metering, continued: the tokens a fine-tune trained on (its examples' tokens times its epochs,
-- as OpenAI counts trained_tokens) and the bytes a finished job left in its owner's filestore
-- (images, adapters, checkpoints).
ALTER TABLE usage_records ADD COLUMN training_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE usage_records ADD COLUMN stored_bytes bigint NOT NULL DEFAULT 0;
