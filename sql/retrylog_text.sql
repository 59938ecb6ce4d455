-- One rule for every text field at every door (docs/security.md): a value is refused when it
-- is longer than its field's bound or holds a control character (C0, DEL, C1), a line or
-- paragraph separator (U+2028, U+2029) or a bidirectional mark, embedding, override or
-- isolate (U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069). record_retry applies it
-- to every text field after the defaults are filled in, and to the detail keys a projection
-- uses. Errors quote the value through retrylog_excerpt, never raw.
--
-- retrylog installs this file (CREATE OR REPLACE) on every migrate, before record_retry.

-- The characters the rule refuses, as a regular expression: the one definition, used below and
-- by record_retry's fast path. IMMUTABLE SQL, so the planner folds it to a constant.
CREATE OR REPLACE FUNCTION retrylog_refused_characters() RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT '[\x01-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]'
$$;

-- A bounded, escaped excerpt of a value for an error message: its first 40 characters in
-- double quotes, every character the rule refuses (and " and \) written as \uXXXX, \" or \\,
-- then its length when it was cut. Nothing in it can move a terminal's cursor or reorder
-- the text around it.
CREATE OR REPLACE FUNCTION retrylog_excerpt(value text) RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    shown     text := '';
    character text;
BEGIN
    IF value IS NULL THEN
        RETURN 'NULL';
    END IF;
    FOREACH character IN ARRAY regexp_split_to_array(left(value, 40), '') LOOP
        shown := shown || CASE
            WHEN character = '"' THEN '\"'
            WHEN character = '\' THEN '\\'
            WHEN character ~ retrylog_refused_characters()
                THEN '\u' || lpad(to_hex(ascii(character)), 4, '0')
            ELSE character END;
    END LOOP;
    RETURN '"' || shown || '"'
        || CASE WHEN length(value) > 40
                THEN format('... (%s characters)', length(value)) ELSE '' END;
END
$$;

-- The rule itself: returns the value, or raises 22023 naming the field and quoting an
-- excerpt of the value.
CREATE OR REPLACE FUNCTION retrylog_check_text(field text, value text, max_chars integer)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
BEGIN
    IF value IS NULL THEN
        RETURN NULL;
    END IF;
    IF length(value) > max_chars THEN
        RAISE EXCEPTION 'invalid %: % is over the limit of % characters',
            field, retrylog_excerpt(value), max_chars USING ERRCODE = '22023';
    END IF;
    IF value ~ retrylog_refused_characters() THEN
        RAISE EXCEPTION 'invalid %: % holds a control character, a line separator or a '
                        'bidirectional override (shown escaped)',
            field, retrylog_excerpt(value) USING ERRCODE = '22023';
    END IF;
    RETURN value;
END
$$;
