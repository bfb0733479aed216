/* operator functions and procedures, supervision */
