-- One rule for every text field at every door (docs/security.md): a value is refused when it
-- is longer than its field's bound or holds a control character (C0, DEL, C1), a line or
-- paragraph separator (U+2028, U+2029), a bidirectional mark, embedding, override or
-- isolate (U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069) or a zero-width character
-- (U+200B-U+200D, U+2060, U+FEFF). The zero-width ones print as nothing, so `fail<U+200B>ed`
-- would read as `failed` yet count as a trend group of its own. record_retry applies it
-- to every text field after the defaults are filled in, and to the detail keys a projection
-- uses. Errors quote the value through retrylog_excerpt, never raw, and name the first
-- refused character by its code point. The Rust twin is `text::is_refused` (src/text.rs),
-- which escapes the same characters wherever the binary prints text for people.
--
-- retrylog installs this file (CREATE OR REPLACE) on every migrate, before record_retry.

-- The characters the rule refuses, as a regular expression: the one definition, used below and
-- by record_retry's fast path. IMMUTABLE SQL, so the planner folds it to a constant.
CREATE OR REPLACE FUNCTION retrylog_refused_characters() RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT '[\x01-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060\u2066-\u2069\ufeff]'
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

-- The rule itself: returns the value, or raises 22023 naming the field, quoting an excerpt
-- of the value and naming the first refused character by its code point and position (the
-- excerpt shows only the first 40 characters; the character may come later).
CREATE OR REPLACE FUNCTION retrylog_check_text(field text, value text, max_chars integer)
RETURNS text
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE AS $$
DECLARE
    refused text;
BEGIN
    IF value IS NULL THEN
        RETURN NULL;
    END IF;
    IF length(value) > max_chars THEN
        RAISE EXCEPTION 'invalid %: % is over the limit of % characters',
            field, retrylog_excerpt(value), max_chars USING ERRCODE = '22023';
    END IF;
    refused := substring(value FROM retrylog_refused_characters());
    IF refused IS NOT NULL THEN
        RAISE EXCEPTION 'invalid %: % holds U+% (%) at character % (shown escaped)',
            field, retrylog_excerpt(value), upper(lpad(to_hex(ascii(refused)), 4, '0')),
            CASE WHEN refused ~ '[\x01-\x1f\x7f-\x9f]' THEN 'a control character'
                 WHEN refused ~ '[\u2028\u2029]' THEN 'a line or paragraph separator'
                 WHEN refused ~ '[\u200b-\u200d\u2060\ufeff]' THEN 'a zero-width character'
                 ELSE 'a bidirectional mark, embedding, override or isolate' END,
            strpos(value, refused) USING ERRCODE = '22023';
    END IF;
    RETURN value;
END
$$;
